"""Entry point of one generator process (`asyncrl generator`): resolve the model and device,
set up the process (allocator, threads, signals, metrics/health HTTP), then run the generator."""

from __future__ import annotations

import logging
import signal
import threading

from asyncrl.launch.config import AsyncRLConfig

logger = logging.getLogger(__name__)


def generator_main(cfg: AsyncRLConfig) -> int:
    import torch

    from asyncrl.generators.metrics import GeneratorMetrics
    from asyncrl.generators.run import HealthCheck, run_generator
    from asyncrl.generators.weights import keep_chunk_memory
    from asyncrl.launch.assets import resolve_data, resolve_device
    from asyncrl.launch.serve import start_metrics_server
    from asyncrl.protocol.sockets import setup_socket_factory

    gen = cfg.generator
    if not keep_chunk_memory():
        logger.info("not glibc: received weight chunks may page-fault anew every version")
    if gen.threads:
        torch.set_num_threads(gen.threads)
    data = resolve_data(cfg)
    metrics = GeneratorMetrics()
    stop = threading.Event()

    def handler(signum, frame):
        logger.info("signal %d: finishing the current group, then exiting", signum)
        stop.set()

    def ready(generator_id: str, health: HealthCheck) -> None:
        """The backend is up: serve metrics and health; a signal now stops the loop (before,
        it ends the process the default way, backend start-up included)."""
        url, _ = start_metrics_server(gen.metrics_host, gen.metrics_port, metrics.registry, health)
        logger.info("generator %s up; metrics at %s", generator_id, url)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handler)
            signal.signal(signal.SIGINT, handler)

    return run_generator(
        gen,
        data.model_path,
        resolve_device(cfg.model.device),
        cfg.model.dtype,
        setup_socket_factory(cfg.security, "client"),
        metrics,
        stop,
        ready,
    )

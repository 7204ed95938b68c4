"""Entry point of one generator process (`asyncrl generator`): resolve the model and device,
set up the process (allocator, threads, signals, metrics/health HTTP), then run the generator.
It exits 0 when stopped by a signal and when the learner announces that its run finished;
after the latter `/metrics` is served `generator.metrics_linger_seconds` longer with
`asyncrl_run_finished` 1, so Prometheus sees a finish rather than a crash."""

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
    from asyncrl.launch.serve import ProcessMetrics, http_options, start_metrics_server
    from asyncrl.protocol.sockets import setup_socket_factory

    gen = cfg.generator
    if not keep_chunk_memory():
        logger.info("not glibc: received weight chunks may page-fault anew every version")
    if gen.threads:
        torch.set_num_threads(gen.threads)
    data = resolve_data(cfg)
    metrics = GeneratorMetrics()
    process = ProcessMetrics(metrics.registry)
    stop = threading.Event()

    def handler(signum, frame):
        logger.info("signal %d: finishing the current group, then exiting", signum)
        stop.set()

    def ready(generator_id: str, health: HealthCheck) -> None:
        """The backend is up: serve metrics and health; a signal now stops the loop (before,
        it ends the process the default way, backend start-up included)."""
        process.healthy.set_function(lambda: float(health()[0]))
        url, _ = start_metrics_server(
            gen.metrics_host, gen.metrics_port, metrics.registry, health, http_options(gen)
        )
        logger.info("generator %s up; metrics at %s", generator_id, url)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handler)
            signal.signal(signal.SIGINT, handler)

    # The disk transport's directory, when the same config configures it for the learner.
    lw = cfg.learner.weights
    weights_dir = lw.dir if lw.type == "disk" else ""
    finished = run_generator(
        gen,
        data.model_path,
        resolve_device(cfg.model.device),
        cfg.model.dtype,
        setup_socket_factory(cfg.security, "client"),
        metrics,
        stop,
        ready,
        weights_dir=weights_dir,
        env=cfg.env,
    )
    if finished:
        process.run_finished.set(1)
        if gen.metrics_linger_seconds > 0:
            logger.info(
                "serving /metrics %.0fs more (metrics_linger_seconds)", gen.metrics_linger_seconds
            )
            stop.wait(gen.metrics_linger_seconds)
    return 0

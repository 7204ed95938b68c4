"""Entry point of one generator process: build the backend, serve metrics, run the worker."""

from __future__ import annotations

import logging
import signal
import threading

logger = logging.getLogger(__name__)


def run_generator(cfg) -> int:
    import torch

    from asyncrl.generators.backends.hf import setup_backend
    from asyncrl.generators.metrics import GeneratorMetrics
    from asyncrl.generators.weights import keep_chunk_memory
    from asyncrl.generators.worker import GeneratorWorker
    from asyncrl.launch.assets import resolve_data
    from asyncrl.launch.serve import start_metrics_server
    from asyncrl.learner.hub import default_generator_id
    from asyncrl.protocol.sockets import setup_socket_factory

    if not keep_chunk_memory():
        logger.info("not glibc: received weight chunks may page-fault anew every version")
    if cfg.generator.threads:
        torch.set_num_threads(cfg.generator.threads)
    gid = cfg.generator.generator_id or default_generator_id()
    data = resolve_data(cfg)
    seed = cfg.generator.seed * 1_000_003 + sum(map(ord, gid))
    backend = setup_backend(cfg, data.model_path, seed)
    if hasattr(backend, "check_every"):
        backend.check_every = cfg.generator.inflight_check_tokens
    metrics = GeneratorMetrics()
    worker = GeneratorWorker(
        backend,
        gid,
        cfg.generator.learner,
        metrics,
        factory=setup_socket_factory(cfg.security, "client"),
        reconnect_seconds=cfg.generator.reconnect_seconds,
        inflight_updates=cfg.generator.inflight_updates,
        prefetch_lease=cfg.generator.prefetch_lease,
    )
    url, _ = start_metrics_server(
        cfg.generator.metrics_host,
        cfg.generator.metrics_port,
        metrics.registry,
        worker.healthy,
    )
    logger.info("generator %s up; metrics at %s", gid, url)

    def handler(signum, frame):
        logger.info("signal %d: finishing the current group, then exiting", signum)
        worker.stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
    try:
        worker.run()
    finally:
        backend.close()
    return 0

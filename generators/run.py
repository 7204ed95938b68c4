"""One generator process, once the launch layer has resolved its inputs: build the backend,
run the generate loop until stopped, close the backend."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable

from asyncrl.generators.backends.base import Backend
from asyncrl.generators.config import GeneratorConfig
from asyncrl.generators.envs.config import EnvConfig
from asyncrl.generators.metrics import GeneratorMetrics
from asyncrl.generators.worker import GeneratorWorker
from asyncrl.protocol.sockets import SocketFactory

HealthCheck = Callable[[], tuple[bool, str]]


def default_generator_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def build_backend(
    config: GeneratorConfig, model_path: str, device: str, dtype: str, seed: int
) -> Backend:
    """The configured backend (`sglang` is imported only when chosen)."""
    if config.backend == "hf":
        from asyncrl.generators.backends.hf import HFBackend

        return HFBackend(model_path, device=device, dtype=dtype, seed=seed)
    from asyncrl.generators.backends.sglang import SGLangBackend

    return SGLangBackend(model_path, config.sglang)


def run_generator(
    config: GeneratorConfig,
    model_path: str,
    device: str,
    dtype: str,
    factory: SocketFactory,
    metrics: GeneratorMetrics,
    stop: threading.Event,
    ready: Callable[[str, HealthCheck], None],
    weights_dir: str = "",
    env: EnvConfig | None = None,
) -> bool:
    """Generate for the learner at `config.learner` until `stop` is set or the learner
    announces that its run finished; returns whether it did. `ready(generator_id, health)` is
    called once the backend is up, before the loop starts: the caller serves `metrics` and the
    health check from then on. `weights_dir`: where disk-transport versions may lie when
    `config.limits.weights_dir` is empty. `env`: multi-turn rollouts with this environment
    (None or env.name none: single-turn)."""
    generator_id = config.generator_id or default_generator_id()
    seed = config.seed * 1_000_003 + sum(map(ord, generator_id))
    episodes = None
    if env is not None and env.enabled:
        from transformers import AutoTokenizer

        from asyncrl.generators.envs.build import episode_factory

        # Before the backend: a broken tool, plug-in or chat template fails fast.
        episodes = episode_factory(env, AutoTokenizer.from_pretrained(model_path))
    backend = build_backend(config, model_path, device, dtype, seed)
    worker = GeneratorWorker(
        backend,
        generator_id,
        config.learner,
        metrics,
        factory=factory,
        reconnect_seconds=config.reconnect_seconds,
        inflight_updates=config.inflight_updates,
        inflight_check_tokens=config.inflight_check_tokens,
        prefetch_lease=config.prefetch_lease,
        groups_per_batch=config.groups_per_batch,
        stop=stop,
        limits=config.limits,
        weights_dir=config.limits.weights_dir or weights_dir,
        episodes=episodes,
    )
    ready(generator_id, worker.healthy)
    try:
        worker.run()
    finally:
        backend.close()
        if config.phases_path:
            worker.phases.write(config.phases_path)
    return worker.finished is not None

"""`asyncrl learner`: the learner role's entry point.

Installs the signal handlers (SIGTERM/SIGINT stop the run after the current step; a
checkpoint is saved on the way out), resolves the device and the model and data paths (the
embedded tiny task is built here, rank 0 first), serves `/metrics` and `/healthz` from the
hub, and writes the JSON events the launcher reads. After a normal finish `/metrics` is served
`learner.metrics_linger_seconds` longer with `asyncrl_run_finished` 1, so Prometheus sees a
finish rather than a crash. Heavy imports happen inside `run`.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from typing import TextIO

from asyncrl.launch.assets import resolve_data, resolve_device
from asyncrl.launch.config import AsyncRLConfig
from asyncrl.launch.serve import ProcessMetrics, http_options, start_metrics_server

logger = logging.getLogger(__name__)


class EventReporter:
    """Serves the hub's metrics and health; emits `learner_ready` and `summary` as JSON
    lines (README, "Events")."""

    def __init__(self, cfg: AsyncRLConfig, events: TextIO) -> None:
        self.cfg = cfg
        self.events = events
        self.metrics_url = ""
        self.process: ProcessMetrics | None = None
        self.run_done = False
        self._http = None
        self._hub = None

    def serve(self, hub) -> None:
        lc = self.cfg.learner
        self._hub = hub
        self.process = ProcessMetrics(hub.metrics.registry)
        self.process.healthy.set_function(lambda: float(self.health()[0]))
        self.metrics_url, self._http = start_metrics_server(
            lc.metrics_host, lc.metrics_port, hub.metrics.registry, self.health, http_options(lc)
        )

    def health(self) -> tuple[bool, str]:
        if self.run_done:
            return True, "finished"  # the hub has stopped, as it should
        return self._hub.healthy()

    def finish(self, stop: threading.Event) -> None:
        """The run ended normally: say so on /metrics for the linger period (SIGTERM ends it)."""
        if self.process is None:
            return
        self.run_done = True
        self.process.run_finished.set(1)
        linger = self.cfg.learner.metrics_linger_seconds
        if linger > 0:
            logger.info(
                "run finished; serving /metrics %.0fs more (metrics_linger_seconds)", linger
            )
            stop.wait(linger)

    def ready(self, event: dict) -> None:
        # The field order of the event as it always was: event, endpoints, metrics, the rest.
        line = {"event": "learner_ready", "endpoints": None, "metrics": self.metrics_url}
        self._emit({**line, **event})

    def finished(self, summary: dict) -> None:
        # On stdout as well as in output_dir/summary.json: a learner launched on its own
        # tells its supervisor how the run went without a shared filesystem.
        self._emit(summary)

    def _emit(self, event: dict) -> None:
        self.events.write(json.dumps(event) + "\n")
        self.events.flush()


def install_stop_signals(stop: threading.Event) -> None:
    def handler(signum, frame):
        logger.warning("signal %d: stopping after the current step", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run(cfg: AsyncRLConfig, resume: bool, events: TextIO) -> dict | None:
    """The learner on this rank; returns the summary on rank 0."""
    from asyncrl.learner.tracking import check_trackers

    # Before torch, DeepSpeed and the assets: a tracker that cannot run is a config error.
    check_trackers(cfg.learner.report_to)
    from asyncrl.learner.engine import init_distributed, rank_zero_first
    from asyncrl.learner.run import run_learner

    stop = threading.Event()
    install_stop_signals(stop)
    device = resolve_device(cfg.model.device)
    init_distributed(device)
    data = rank_zero_first(lambda: resolve_data(cfg))
    reporter = EventReporter(cfg, events)
    summary = run_learner(
        cfg,
        data.model_path,
        data.train_path,
        data.eval_path,
        device,
        stop,
        resume,
        reporter,
        env=_env_hooks(cfg),
    )
    if summary is not None and not stop.is_set():
        reporter.finish(stop)
    return summary


def _env_hooks(cfg: AsyncRLConfig):
    """The learner's view of the environment generators run (None without one): the tool
    schemas prompts are rendered with and held-out evaluation by whole episodes."""
    if not cfg.env.enabled:
        return None
    from asyncrl.generators.envs.build import episode_evaluator, tool_schemas
    from asyncrl.learner.evaluation import EnvHooks

    return EnvHooks(tools=tool_schemas(cfg.env) or None, episodes=episode_evaluator(cfg.env))

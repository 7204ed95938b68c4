"""Experiment tracking and progress on rank 0: every per-step statistic of the learner goes to
the configured trackers (`learner.report_to`: jsonl, tensorboard, wandb) and to Prometheus
(`asyncrl_<stat>` gauges), and a progress line goes to the log.

Trackers are imported only when configured; a configured one whose library is missing is
reported by `check_trackers` before any model loads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from asyncrl.learner.tracking.base import StatNames, Tracker, TrackerUnavailable
from asyncrl.learner.tracking.progress import ProgressGate, eta_seconds, fmt_value, format_progress

__all__ = ["Tracker", "TrackerUnavailable", "Tracking", "check_trackers", "make_trackers"]

logger = logging.getLogger(__name__)


def check_trackers(report_to: Iterable[str]) -> None:
    """Raise TrackerUnavailable (one line) for a configured tracker whose library is missing."""
    names = set(report_to)
    if "tensorboard" in names:
        from asyncrl.learner.tracking.tensorboard import check_available

        check_available()
    if "wandb" in names:
        from asyncrl.learner.tracking.wandb import check_available

        check_available()


def make_trackers(
    report_to: Iterable[str],
    output_dir: str,
    wandb_project: str,
    config: dict,
    resumed_from: int | None = None,
) -> list[Tracker]:
    """The configured trackers writing under `output_dir` (each named once). `resumed_from`:
    the version a resumed run restarts at; what the killed run logged after it is undone."""
    out = Path(output_dir)
    trackers: list[Tracker] = []
    for name in dict.fromkeys(report_to):
        if name == "jsonl":
            from asyncrl.learner.tracking.jsonl import JsonlTracker

            trackers.append(JsonlTracker(out / "metrics.jsonl", resumed_from))
        elif name == "tensorboard":
            from asyncrl.learner.tracking.tensorboard import TensorBoardTracker

            trackers.append(TensorBoardTracker(out / "tensorboard", resumed_from))
        elif name == "wandb":
            from asyncrl.learner.tracking.wandb import WandbTracker

            trackers.append(WandbTracker(out / "wandb", wandb_project, config))
        else:  # pragma: no cover - the config's Literal rejects other names
            raise ValueError(f"unknown tracker {name!r}")
    return trackers


class Tracking:
    """Rank 0's reporting of each step: statistics to the trackers and to `metrics` (the
    learner's Prometheus series, or None), the progress line to the log.

    `hub` (optional) adds the buffer's and the generators' figures to each step's statistics.
    """

    def __init__(
        self,
        trackers: list[Tracker],
        metrics,
        total_steps: int,
        log_every: int,
        max_seconds: float = 0.0,
        hub=None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.trackers, self.metrics, self.hub, self.clock = trackers, metrics, hub, clock
        self.total, self.max_seconds = total_steps, max_seconds
        self.names = StatNames()
        self.gate = ProgressGate(total_steps, log_every)
        self.start_step = 0
        self.t0 = self._last_step_time = self._last_line_time = clock()
        self._tokens_since_line = 0.0
        self.accuracy: float | None = None

    def start(self, version: int, evaluation: dict[str, float | None]) -> None:
        """The step loop starts at `version`; `evaluation` holds the held-out figures of the
        weights it starts from (e.g. `eval_accuracy`), recorded at that version."""
        self.start_step = version
        self.t0 = self._last_step_time = self._last_line_time = self.clock()
        self.record(version, evaluation)

    def step(self, version: int, stats: dict) -> None:
        """The step that produced `version` is done: `stats` are its figures (loss terms, clip
        fractions, IS weights, KL, entropy, rewards, advantages, staleness, grad norm, ...)."""
        now = self.clock()
        tokens = float(stats.get("response_tokens", 0.0))
        stats = dict(stats)
        stats["step_seconds"] = now - self._last_step_time
        stats["tokens_per_second"] = tokens / max(now - self._last_step_time, 1e-9)
        stats["clip_fraction"] = sum(
            float(stats.get(k, 0.0)) for k in ("clip_frac_low", "clip_frac_high", "clip_frac_dual")
        )
        if self.hub is not None:
            st = self.hub.stats()
            stats["buffer_groups_waiting"] = st["waiting"]
            stats["generation_tokens_per_second"] = st["generation_capacity"]
        self._last_step_time = now
        if self.metrics is not None:
            self.metrics.steps.inc()
            self.metrics.tokens.inc(tokens)
        clean = self.record(version, stats)
        self._tokens_since_line += tokens
        if self.gate.due(version, now):
            logger.info(self._line(version, clean, now))

    def record(self, version: int, stats: dict) -> dict[str, float]:
        """`stats` (None values skipped) to Prometheus and every tracker, at `version`."""
        clean, dropped = self.names.clean({k: v for k, v in stats.items() if v is not None})
        for key in dropped:
            logger.warning("statistic %r not reported: unusable name or past the name limit", key)
            if self.metrics is not None:
                self.metrics.stats_dropped.inc()
        if "eval_accuracy" in clean:
            self.accuracy = clean["eval_accuracy"]
        if self.metrics is not None:
            self.metrics.stats.set(clean)
        for tracker in self.trackers:
            tracker.log(version, clean)
        return clean

    def _line(self, version: int, s: dict[str, float], now: float) -> str:
        rate = self._tokens_since_line / max(now - self._last_line_time, 1e-9)
        self._tokens_since_line, self._last_line_time = 0.0, now
        elapsed = now - self.t0
        time_left = self.max_seconds - elapsed if self.max_seconds else None
        extra = {
            "loss": fmt_value(s.get("loss"), 4),
            "clip": fmt_value(s.get("clip_fraction")),
            "grad norm": fmt_value(s.get("grad_norm")),
            "acc": fmt_value(self.accuracy),
        }
        if "buffer_groups_waiting" in s:
            extra["buffer"] = str(int(s["buffer_groups_waiting"]))
        return format_progress(
            version,
            self.total,
            rate,
            s.get("reward_mean"),
            s.get("staleness_mean"),
            s.get("staleness_max"),
            eta_seconds(version, self.total, self.start_step, elapsed, time_left),
            extra,
        )

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []

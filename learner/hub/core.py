"""What the hub's parts share: the ledger and the learner's version under one lock, and the
counting of dropped groups.

Fault tolerance is the point of the hub, so a dropped group is always counted by reason and
logged at a bounded rate; it never reaches training or stops the loop.
"""

from __future__ import annotations

import logging
import threading
import time

from asyncrl.buffer.ledger import Ledger
from asyncrl.buffer.replay import Dropped
from asyncrl.learner.config import RunConfig
from asyncrl.learner.hub.keep import lease_samples
from asyncrl.learner.metrics import LearnerMetrics

logger = logging.getLogger("asyncrl.learner.hub")


class RateLimitedLog:
    """At most one log line per `interval` seconds per key; counts what it suppressed."""

    def __init__(self, interval: float = 5.0):
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args, **kwargs) -> None:
        self.log(logging.WARNING, key, msg, *args, **kwargs)

    def info(self, key: str, msg: str, *args, **kwargs) -> None:
        self.log(logging.INFO, key, msg, *args, **kwargs)

    def log(self, level: int, key: str, msg: str, *args, **kwargs) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -1e9) >= self.interval:
            n = self._suppressed.pop(key, 0)
            suffix = f" ({n} similar suppressed)" if n else ""
            logger.log(level, msg + suffix, *args, **kwargs)
            self._last[key] = now
        else:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1


class HubCore:
    """The ledger, the learner's version and the metrics, shared by the socket thread, the
    reward pool's threads and the training thread. Hold `lock` to touch `ledger` or
    `version`; it is a Condition so the trainer can wait for groups."""

    def __init__(self, cfg: RunConfig, metrics: LearnerMetrics):
        self.cfg = cfg
        self.metrics = metrics
        self.lock = threading.Condition()
        # A lease asks for N samples when TTRL votes over more than it trains on.
        self.ledger = Ledger(cfg.buffer, cfg.train.groups_per_step, lease_samples(cfg))
        self.version = 0
        self.log = RateLimitedLog()

    def drop(self, reason: str, detail: str = "") -> None:
        """Count a group that will not be trained (reason: one of metrics.DROP_REASONS)."""
        self.metrics.dropped.labels(reason=reason).inc()
        if detail:
            self.log.warning(reason, "dropped rollout (%s): %s", reason, detail)

    def drop_all(self, dropped: list[Dropped]) -> None:
        for d in dropped:
            self.drop(d.reason)

    def evicted(self, generator_id: str, address: str, bound: str) -> None:
        """A session was forgotten to make room for a hello (`Peers`' bounds): count it, and
        say whose (rate-limited: a flood would otherwise fill the log)."""
        self.metrics.sessions_evicted.labels(bound=bound).inc()
        self.log.warning(
            "evicted",
            "session of generator %r (%s) forgotten: past the %s bound on sessions",
            generator_id[:64],
            address or "address unknown",
            bound,
        )

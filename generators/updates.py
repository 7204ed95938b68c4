"""Keeping the backend's weights fresh: which version the learner offers, and the fetchers
that bring it in, tried in order until one loads it (zmq chunks last, always there).

A version is loaded between groups, or between decode steps when the backend declares
in-flight loads. A streamed version is announced twice, as its writing starts and once
complete; an in-flight load waits for the complete one, so decoding does not stall while the
learner writes.
"""

from __future__ import annotations

import logging
import time

from asyncrl.generators.backends.base import Backend
from asyncrl.generators.bounds import LearnerBounds
from asyncrl.generators.config import LearnerLimits
from asyncrl.generators.fetchers.base import Fetched, WeightFetcher
from asyncrl.generators.fetchers.disk import DiskFetcher
from asyncrl.generators.fetchers.nccl import NcclFetcher
from asyncrl.generators.fetchers.zmq import ChunkFetcher
from asyncrl.generators.metrics import GeneratorMetrics
from asyncrl.generators.session import LearnerGone, Session, announcement_of
from asyncrl.protocol.messages import WeightsAnnouncement, Welcome

logger = logging.getLogger(__name__)


class WeightUpdates:
    """The newest version announced and not yet loaded (`pending`), and how to load it."""

    def __init__(
        self,
        backend: Backend,
        session: Session,
        metrics: GeneratorMetrics,
        fetch_window: int,
        bounds: LearnerBounds | None = None,
    ):
        self.bounds = bounds or LearnerBounds(LearnerLimits(), metrics)
        self.backend = backend
        self.session = session
        self.metrics = metrics
        self.pending: WeightsAnnouncement | None = None
        # Seconds of weight loads inside the current generate call (not generation work).
        self.inflight_load_seconds = 0.0
        # (how, seconds) of each version loaded since the worker's last summary line.
        self.recent_loads: list[tuple[str, float]] = []
        # Every transport this backend can use, in order of preference; each connection
        # keeps those its learner offers. The chunk fetcher outlives connections: it keeps
        # the previous blob's buffer for the next version.
        self._transports: list[WeightFetcher] = [DiskFetcher(backend, metrics, self.bounds)]
        if backend.capabilities.distributed_groups:
            self._transports.append(NcclFetcher(session, backend, metrics))
        self._transports.append(ChunkFetcher(session, backend, metrics, fetch_window, self.bounds))
        self._fetchers: list[WeightFetcher] = []

    def connected(self, welcome: Welcome) -> None:
        """A new connection: keep the transports its learner offers, take its latest version."""
        self._fetchers = [f for f in self._transports if f.offered(welcome)]
        self.latest(welcome)

    def latest(self, welcome: Welcome) -> None:
        """The version a Welcome names is pending unless we hold it. Not `>`: a learner
        resumed from a checkpoint may be behind the weights we hold, and its version is the
        truth (rollouts tagged with a future version are invalid)."""
        if welcome.weights_version >= 0 and welcome.weights_version != self.backend.version:
            ann = announcement_of(welcome)
            if self.bounds.announcement_ok(ann):
                self.pending = ann

    def drain(self) -> None:
        """Take the announcements received so far: the newest newer version is pending."""
        for msg in self.session.announcements():
            if msg.version <= self.backend.version or not self.bounds.announcement_ok(msg):
                continue
            p = self.pending
            # A streamed version is announced twice: as it starts, then complete.
            completes = p is not None and msg.version == p.version and bool(msg.digest)
            if p is None or msg.version > p.version or completes:
                self.pending = msg

    def update(self) -> None:
        """Load the pending version, if it is not the one the backend holds."""
        if self.pending is not None and self.pending.version != self.backend.version:
            self.fetch(self.pending)

    def between_tokens(self) -> None:
        """The backend's in-flight hook, called between decode steps: load a newer version if
        one was announced complete, so a long generation does not finish on stale weights."""
        if not self.session.connected:
            return
        self.drain()
        if self.pending is None or self.pending.version <= self.backend.version:
            return
        if not self.pending.digest:
            return  # still being written: decode on until it is announced complete
        t = time.time()
        try:
            self.fetch(self.pending)
        except LearnerGone:
            return  # the main loop finds out on its next request and reconnects
        finally:
            self.inflight_load_seconds += time.time() - t
        self.metrics.inflight_updates.inc()

    def fetch(self, ann: WeightsAnnouncement) -> None:
        """Bring `ann` in with the first fetcher that does not decline it; afterwards nothing
        is pending (loaded, or dropped until a newer announcement)."""
        for fetcher in self._fetchers:
            started = time.time()
            result = fetcher.fetch(ann)
            if result is Fetched.DECLINED:
                continue
            self.pending = None
            if result is Fetched.LOADED:
                self._loaded(ann, started, fetcher.how)
            return

    def _loaded(self, ann: WeightsAnnouncement, started: float, how: str) -> None:
        seconds = time.time() - started
        self.metrics.policy_version.set(ann.version)
        self.metrics.weight_load_seconds.observe(seconds)
        self.recent_loads.append((how, seconds))
        # One line per version is most of a run's log at INFO: the worker's periodic summary
        # counts the loads instead.
        logger.debug(
            "loaded weights version %d (%.1f MB) %s in %.2fs",
            ann.version,
            ann.size / 1e6,
            how,
            seconds,
        )

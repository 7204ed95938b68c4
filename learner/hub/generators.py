"""Generator housekeeping: who is connected, on which weights, how fast they generate; a
generator silent for two heartbeat intervals loses its leases."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from asyncrl.learner.hub.core import HubCore


@dataclass
class GeneratorInfo:
    generator_id: str
    backend: str
    version: int
    last_seen: float


class Generators:
    """The generators the hub has heard from. Calls are made under the hub's lock."""

    def __init__(self, core: HubCore, forget: Callable[[str], None]):
        """`forget(generator_id)` is told of every generator that went silent (the nccl
        publisher drops its group)."""
        self.core = core
        self.forget = forget
        self.heartbeat_seconds = core.cfg.buffer.heartbeat_seconds
        self.connected: dict[str, GeneratorInfo] = {}
        self.seen: set[str] = set()  # generators that ever had a group accepted
        # Per generator: (response tokens, seconds spent generating) of valid groups, for the
        # generation capacity that `asyncrl bench` compares the loop's throughput with.
        self.work: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        self.first_joined: float | None = None  # epoch seconds the first generator said hello

    def touch(self, gid: str, backend: str | None, version: int, now: float) -> bool:
        """Record a sign of life; True when the generator was not known (joined)."""
        info = self.connected.get(gid)
        joined = info is None
        if joined:
            info = self.connected[gid] = GeneratorInfo(gid, backend or "?", version, now)
            if self.first_joined is None:
                self.first_joined = now
        info.last_seen = now
        info.version = version
        if backend:
            info.backend = backend
        return joined

    def record_work(self, gid: str, tokens: float, seconds: float) -> None:
        work = self.work[gid]
        work[0] += tokens
        work[1] += seconds

    def capacity(self) -> float:
        """Response tokens per second the generators produce while generating (not while
        waiting on the gate), summed over generators: the loop's generation-only rate."""
        return sum(t / s for t, s in self.work.values() if s > 0)

    def up_to_date(self, latest: int) -> int:
        return sum(1 for g in self.connected.values() if g.version >= latest)

    def reclaim_silent(self, now: float) -> None:
        """Generators silent for two heartbeat intervals are forgotten; the ledger reclaims
        their leases (their prompts go out again)."""
        silent = [
            g for g in self.connected.values() if now - g.last_seen > 2 * self.heartbeat_seconds
        ]
        for g in silent:
            recs = self.core.ledger.on_generator_lost(g.generator_id)
            self.core.metrics.leases_expired.inc(len(recs))
            del self.connected[g.generator_id]
            self.forget(g.generator_id)
            self.core.log.warning(
                "silent",
                "generator %r went silent; reclaimed %d leases",
                g.generator_id[:64],
                len(recs),
            )

"""The replay buffer: complete, rewarded groups waiting to be trained, oldest first.

Bounded in groups and bytes (overflow evicts the oldest), guarded at consumption (a group whose
staleness exceeds η is dropped), with optional bounded reuse while a group stays within η.
Every removal that is not a normal consumption is returned to the caller with its reason so
the ledger can release its gate capacity and the hub count it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class BufferedGroup:
    """One group as the buffer sees it; `payload` is opaque (the learner's tensors-to-be)."""

    lease_id: str
    prompt_index: int
    version: int
    nbytes: int
    payload: Any = field(repr=False, default=None)
    uses: int = 0


@dataclass
class Dropped:
    group: BufferedGroup
    reason: str  # "stale" | "overflow"


class ReplayBuffer:
    """FIFO of groups by arrival; `sample` takes the oldest non-stale ones."""

    def __init__(self, max_groups: int, max_bytes: int, max_staleness: int, max_reuse: int = 0):
        if max_groups < 1 or max_bytes < 1:
            raise ValueError("buffer bounds must be positive")
        self.max_groups = max_groups
        self.max_bytes = max_bytes
        self.max_staleness = max_staleness
        self.max_reuse = max_reuse
        self._groups: deque[BufferedGroup] = deque()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._groups)

    def groups(self) -> list[BufferedGroup]:
        return list(self._groups)

    def add(self, group: BufferedGroup) -> list[Dropped]:
        """Append a group; evict the oldest while over a bound. Never evicts the new group
        unless it alone exceeds the byte bound."""
        self._groups.append(group)
        self.nbytes += group.nbytes
        dropped = []
        while len(self._groups) > self.max_groups or (
            self.nbytes > self.max_bytes and len(self._groups) > 1
        ):
            dropped.append(Dropped(self._pop_left(), "overflow"))
        if self.nbytes > self.max_bytes:
            dropped.append(Dropped(self._pop_left(), "overflow"))
        return dropped

    def drop_stale(self, version: int) -> list[Dropped]:
        """Remove groups that would exceed η if trained at learner `version`."""
        keep, dropped = deque(), []
        for g in self._groups:
            if version - g.version > self.max_staleness:
                dropped.append(Dropped(g, "stale"))
                self.nbytes -= g.nbytes
            else:
                keep.append(g)
        self._groups = keep
        return dropped

    def retire_used(self) -> int:
        """Remove groups already trained as often as `max_reuse` now allows (it was lowered);
        they were consumed, so nothing is lost. Returns how many."""
        keep = deque(g for g in self._groups if g.uses <= self.max_reuse)
        gone = len(self._groups) - len(keep)
        self._groups = keep
        self.nbytes = sum(g.nbytes for g in keep)
        return gone

    def sample(self, n: int, version: int) -> tuple[list[BufferedGroup] | None, list[Dropped]]:
        """Take `n` groups for a step at learner `version`, oldest first, after dropping stale
        ones. Returns (None, dropped) if fewer than `n` remain. With `max_reuse > 0` a group
        stays (at the back) until used `1 + max_reuse` times."""
        dropped = self.drop_stale(version)
        if len(self._groups) < n:
            return None, dropped
        taken = [self._pop_left() for _ in range(n)]
        for g in taken:
            g.uses += 1
            if g.uses <= self.max_reuse:
                self._groups.append(g)
                self.nbytes += g.nbytes
        return taken, dropped

    def _pop_left(self) -> BufferedGroup:
        g = self._groups.popleft()
        self.nbytes -= g.nbytes
        return g

"""Whether the learner is making progress, for an honest `/healthz`.

Progress is read from the ledger's counters each time health is asked (every scrape samples
it through `asyncrl_healthy`, and probes ask too): a counter that moved since the last look
resets its clock. So a stall is seen within `stall_seconds` plus one polling interval.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Progress:
    value: int = -1
    since: float = 0.0

    def seen(self, value: int, now: float) -> float:
        """Seconds since `value` last changed."""
        if value != self.value:
            self.value, self.since = value, now
        return now - self.since


class HealthWatch:
    """Two stalls a live hub thread does not show: intake (generators connected, the trainer
    short of a batch, no group accepted) and the step loop (a batch's worth of groups waiting,
    none taken)."""

    def __init__(self, stall_seconds: float):
        self.stall_seconds = stall_seconds
        self._accepted = _Progress()
        self._consumed = _Progress()

    def check(
        self, now: float, *, connected: int, accepted: int, consumed: int, waiting: int, batch: int
    ) -> tuple[bool, str]:
        idle_intake = self._accepted.seen(accepted, now)
        idle_steps = self._consumed.seen(consumed, now)
        limit = self.stall_seconds
        if connected and waiting < batch and idle_intake >= limit:
            return False, (
                f"intake stalled: no group accepted for {idle_intake:.0f}s with {connected} "
                f"generators connected and {waiting}/{batch} groups waiting"
            )
        if waiting >= batch and idle_steps >= limit:
            return False, (
                f"step loop stuck: no batch taken for {idle_steps:.0f}s while {waiting} groups wait"
            )
        return True, ""

"""The staleness gate: admission control for new leases (AReaL-style).

With `B` groups per optimizer step and limit `η`, a lease may be issued only while
`accepted + in_flight < (v + η + 1) * B`. `v` is the weights version the *requesting generator*
holds, which is never ahead of the learner's, so a generator still on old weights cannot take
work that would arrive too stale. `accepted` counts groups taken into the buffer and still
trainable or trained (waiting + consumed); groups dropped at intake, evicted or dropped as stale
release their capacity so the gate can never wedge itself.

Why it bounds staleness: the k-th accepted group (0-based) is consumed by step `k // B`, and it
was issued at a version `v_i` with `k < (v_i + η + 1) * B`, so `k // B - v_i <= η`.

Pure logic: no locks, no clock, no torch. Its only caller is the ledger (`buffer.ledger`),
which moves it together with the leases and the buffer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StalenessGate:
    """Counters and the admission rule. Call the `on_*` methods as leases move."""

    groups_per_step: int
    max_staleness: int
    accepted: int = 0
    in_flight: int = 0

    def __post_init__(self) -> None:
        if self.groups_per_step < 1:
            raise ValueError("groups_per_step must be >= 1")
        if self.max_staleness < 0:
            raise ValueError("max_staleness must be >= 0")

    def limit(self, version: int) -> int:
        """Total groups (accepted + in flight) allowed while the generator holds `version`."""
        return (version + self.max_staleness + 1) * self.groups_per_step

    def capacity(self, version: int) -> int:
        return self.limit(version) - self.accepted - self.in_flight

    def can_issue(self, version: int) -> bool:
        return self.capacity(version) > 0

    def on_issue(self) -> None:
        self.in_flight += 1

    def on_accept(self) -> None:
        """A leased group came back valid and entered the buffer."""
        self._close_lease()
        self.accepted += 1

    def on_lease_closed(self) -> None:
        """A lease ended without a group entering the buffer (expired, returned, dropped at
        intake): its capacity is free again."""
        self._close_lease()

    def on_discard(self, n: int = 1) -> None:
        """Accepted groups left the buffer untrained (stale, overflow): free their capacity."""
        if n > self.accepted:
            raise ValueError("discarding more groups than were accepted")
        self.accepted -= n

    def _close_lease(self) -> None:
        if self.in_flight <= 0:
            raise ValueError("no lease in flight")
        self.in_flight -= 1

    def state_dict(self) -> dict:
        return {"accepted": self.accepted}

    def load_state_dict(self, state: dict, waiting_restored: int, consumed: int) -> None:
        """Restore after a restart. Leases open at the crash are gone and groups that were
        waiting but not spilled are lost, so `accepted` is rebuilt from what really exists
        (consumed + restored waiting) rather than trusted: no capacity inflation."""
        self.accepted = consumed + waiting_restored
        self.in_flight = 0

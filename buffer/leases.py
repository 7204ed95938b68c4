"""Lease bookkeeping: which generator holds which prompt group, and until when.

A lease id is never reused (the counter survives restarts through the checkpoint), so a late or
duplicate return is recognised by id and dropped: no group is trained twice. Recently closed ids
are remembered (bounded) only to tell `expired` from `duplicate` in the drop metrics.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class LeaseRecord:
    lease_id: int
    prompt_index: int
    generator_id: str
    issued_version: int
    issued_at: float
    deadline: float
    group_size: int


class LeaseTable:
    """Open leases plus a bounded memory of closed ones."""

    def __init__(self, next_id: int = 1, remember: int = 100_000):
        self.next_id = next_id
        self.open: dict[int, LeaseRecord] = {}
        self._closed: OrderedDict[int, str] = OrderedDict()
        self._remember = remember

    def issue(
        self,
        prompt_index: int,
        generator_id: str,
        version: int,
        now: float,
        duration: float,
        group_size: int,
    ) -> LeaseRecord:
        rec = LeaseRecord(
            self.next_id, prompt_index, generator_id, version, now, now + duration, group_size
        )
        self.next_id += 1
        self.open[rec.lease_id] = rec
        return rec

    def complete(self, lease_id: int) -> tuple[LeaseRecord | None, str]:
        """Close a lease on return. Returns (record, "") or (None, reason) where reason is
        `expired` (returned after reclaim) or `duplicate` (already returned or never issued)."""
        rec = self.open.pop(lease_id, None)
        if rec is not None:
            self._mark(lease_id, "completed")
            return rec, ""
        return None, "expired" if self._closed.get(lease_id) == "expired" else "duplicate"

    def expire_due(self, now: float) -> list[LeaseRecord]:
        due = [r for r in self.open.values() if r.deadline <= now]
        for r in due:
            self._close(r.lease_id, "expired")
        return due

    def reclaim_generator(self, generator_id: str) -> list[LeaseRecord]:
        """Take back every lease of a generator that went silent or said goodbye."""
        recs = [r for r in self.open.values() if r.generator_id == generator_id]
        for r in recs:
            self._close(r.lease_id, "expired")
        return recs

    def give_back(self, lease_id: int, generator_id: str) -> LeaseRecord | None:
        rec = self.open.get(lease_id)
        if rec is None or rec.generator_id != generator_id:
            return None
        self._close(lease_id, "expired")
        return rec

    def extend(self, generator_id: str, lease_ids: list[int], now: float, duration: float) -> None:
        """Heartbeats keep long generations alive: push the deadline of listed leases."""
        for lid in lease_ids:
            rec = self.open.get(lid)
            if rec is not None and rec.generator_id == generator_id:
                rec.deadline = max(rec.deadline, now + duration)

    def _close(self, lease_id: int, how: str) -> None:
        self.open.pop(lease_id, None)
        self._mark(lease_id, how)

    def _mark(self, lease_id: int, how: str) -> None:
        self._closed[lease_id] = how
        while len(self._closed) > self._remember:
            self._closed.popitem(last=False)

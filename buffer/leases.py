"""Lease bookkeeping: which holder has which prompt group, and until when.

A lease id is a random 128-bit token (`secrets.token_hex(16)`, 32 hex characters): it cannot be
guessed from the ids a peer has seen and is never issued twice, across restarts too, without any
counter to save. A lease belongs to its holder, the connection that received it (generator id,
the hub's name for the connection, and the CURVE public key when CURVE is on): only that holder
returns or extends it, and a group completes it only when it names the same generator and, under
CURVE, comes with the same key. Recently closed ids are remembered (bounded) to tell `expired`
and `duplicate` (ids we issued) from `unknown_lease` (ids we did not) in the drop metrics.
"""

from __future__ import annotations

import secrets
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


def new_lease_id() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True)
class Holder:
    """Who received a lease. `connection` is opaque here (the hub uses the control socket's
    ZeroMQ routing identity); `key` is the CURVE public key, "" without CURVE."""

    generator_id: str
    connection: bytes
    key: str = ""


@dataclass
class LeaseRecord:
    lease_id: str
    prompt_index: int
    holder: Holder
    issued_version: int
    issued_at: float
    deadline: float
    group_size: int

    @property
    def generator_id(self) -> str:
        return self.holder.generator_id


class LeaseTable:
    """Open leases plus a bounded memory of closed ones."""

    def __init__(self, remember: int = 100_000, new_id: Callable[[], str] = new_lease_id):
        self.open: dict[str, LeaseRecord] = {}
        self._closed: OrderedDict[str, str] = OrderedDict()
        self._remember = remember
        self._new_id = new_id

    def issue(
        self,
        prompt_index: int,
        holder: Holder,
        version: int,
        now: float,
        duration: float,
        group_size: int,
    ) -> LeaseRecord:
        lease_id = self._new_id()
        if lease_id in self.open or lease_id in self._closed:
            # 2^-128 for random ids; a broken id source must not hand one lease to two holders.
            raise RuntimeError(f"lease id {lease_id} issued twice")
        rec = LeaseRecord(lease_id, prompt_index, holder, version, now, now + duration, group_size)
        self.open[lease_id] = rec
        return rec

    def complete(
        self, lease_id: str, generator_id: str, key: str
    ) -> tuple[LeaseRecord | None, str]:
        """Close a lease on the return of its group. Returns (record, "") or (None, reason):
        `wrong_holder` (open, but another generator's or key's: left open for its holder),
        `expired` (returned after reclaim), `duplicate` (already completed) or `unknown_lease`
        (not an id we issued, or one closed so long ago that it is forgotten)."""
        rec = self.open.get(lease_id)
        if rec is not None:
            if (rec.holder.generator_id, rec.holder.key) != (generator_id, key):
                return None, "wrong_holder"
            self._close(lease_id, "completed")
            return rec, ""
        return None, self.why_closed(lease_id)

    def why_closed(self, lease_id: str) -> str:
        how = self._closed.get(lease_id)
        if how is None:
            return "unknown_lease"
        return "expired" if how == "expired" else "duplicate"

    def expire_due(self, now: float) -> list[LeaseRecord]:
        due = [r for r in self.open.values() if r.deadline <= now]
        for r in due:
            self._close(r.lease_id, "expired")
        return due

    def reclaim_generator(self, generator_id: str) -> list[LeaseRecord]:
        """Take back every lease of a generator that went silent."""
        recs = [r for r in self.open.values() if r.generator_id == generator_id]
        for r in recs:
            self._close(r.lease_id, "expired")
        return recs

    def give_back(self, lease_id: str, holder: Holder) -> tuple[LeaseRecord | None, str]:
        """Close a lease its holder hands back unfinished: (record, "") or (None, reason),
        reason `wrong_holder` or one of `why_closed`'s."""
        rec = self.open.get(lease_id)
        if rec is None:
            return None, self.why_closed(lease_id)
        if rec.holder != holder:
            return None, "wrong_holder"
        self._close(lease_id, "expired")
        return rec, ""

    def extend(
        self, holder: Holder, lease_ids: list[str], now: float, duration: float
    ) -> Counter[str]:
        """Heartbeats keep long generations alive: push the deadline of the listed leases that
        `holder` holds. Returns the refusals by reason (`wrong_holder`, `unknown_lease`); an
        id closed meanwhile is the normal race of a heartbeat with its group, not counted."""
        refused: Counter[str] = Counter()
        for lid in lease_ids:
            rec = self.open.get(lid)
            if rec is None:
                if self.why_closed(lid) == "unknown_lease":
                    refused["unknown_lease"] += 1
            elif rec.holder != holder:
                refused["wrong_holder"] += 1
            else:
                rec.deadline = max(rec.deadline, now + duration)
        return refused

    def move_holder(self, old: Holder, new: Holder) -> int:
        """The holder reconnected (and proved it, see the hub's peers): its open leases now
        belong to the new connection. Returns how many moved."""
        moved = 0
        for rec in self.open.values():
            if rec.holder == old:
                rec.holder = new
                moved += 1
        return moved

    def _close(self, lease_id: str, how: str) -> None:
        self.open.pop(lease_id, None)
        self._closed[lease_id] = how
        while len(self._closed) > self._remember:
            self._closed.popitem(last=False)

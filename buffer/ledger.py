"""The ledger: the one owner of the staleness rule (DESIGN.md, "Versions and staleness").

It holds the gate counters, the open leases, the groups being scored, the replay buffer, the
prompts to send out again and the consumed count, and changes them only through methods named
after the events of a lease's life. The hub reports events; it never touches the parts.

Where a lease ends decides what happens to its prompt, and that rule lives here, in one table
(`REISSUE`): a lease that expired, was handed back or whose generator was lost sends its prompt
out again (the prompt was never judged); a group that came back and was rejected does so only
when the fault was the message's (`invalid`), not the prompt's (zero-variance rewards, a reward
that failed or ran out of time would very likely do the same again).

Pure logic: no locks (the hub serialises calls), no clock (`now` is passed in), no torch.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from asyncrl.buffer.config import BufferConfig
from asyncrl.buffer.gate import StalenessGate
from asyncrl.buffer.leases import Holder, LeaseRecord, LeaseTable
from asyncrl.buffer.replay import BufferedGroup, Dropped, ReplayBuffer

# Why a group that came back did not enter the buffer -> whether its prompt goes out again.
REISSUE = {
    "invalid": True,  # the message broke the protocol; the prompt itself is fine
    "filtered": False,  # zero reward variance: the prompt was judged, it has no signal
    "reward_error": False,  # the reward raised on it: it would raise again
    "reward_timeout": False,  # the reward overran on it: it would overrun again
}


@dataclass(frozen=True)
class Denied:
    """A refused lease request: `gate` (no capacity at the generator's version) or `version`
    (the generator holds no learner weights, or weights newer than the learner's)."""

    reason: str


class Journal(Protocol):
    """Where the ledger reports what happens to groups, for an audit (`learner.audit`)."""

    def accepted(self, lease_id: str, version: int) -> None: ...

    def dropped(self, lease_id: str, reason: str) -> None: ...

    def trained(self, lease_ids: list[str], step: int) -> None: ...


class Ledger:
    """Gate + leases + buffer + re-issue queue, moved together by events."""

    def __init__(self, cfg: BufferConfig, groups_per_step: int, group_size: int):
        self.lease_seconds = cfg.lease_seconds
        self.group_size = group_size
        self.gate = StalenessGate(groups_per_step, cfg.max_staleness)
        self.leases = LeaseTable()
        self.buffer = ReplayBuffer(cfg.max_groups, cfg.max_bytes, cfg.max_staleness, cfg.max_reuse)
        self.reissue: deque[int] = deque()
        # Leases whose group came back and is being scored: closed for their generator, still
        # in flight for the gate until the group is accepted or rejected.
        self.scoring: dict[str, LeaseRecord] = {}
        self.consumed = 0
        self.journal: Journal | None = None

    # ------------------------------------------------------------ read-only counters
    @property
    def accepted(self) -> int:
        return self.gate.accepted

    @property
    def in_flight(self) -> int:
        return self.gate.in_flight

    @property
    def waiting(self) -> int:
        return len(self.buffer)

    @property
    def waiting_bytes(self) -> int:
        return self.buffer.nbytes

    def capacity(self, version: int) -> int:
        return self.gate.capacity(version)

    def holder(self, lease_id: str) -> Holder | None:
        """Who holds open lease `lease_id`, if anyone."""
        rec = self.leases.open.get(lease_id)
        return rec.holder if rec is not None else None

    # ------------------------------------------------------------ lease events
    def on_lease_requested(
        self,
        holder: Holder,
        held_version: int,
        learner_version: int,
        now: float,
        next_prompt: Callable[[], int],
    ) -> LeaseRecord | Denied:
        """Issue a lease on a prompt to re-issue, else on `next_prompt()`, if the gate allows
        it at the version the generator holds."""
        # Without learner weights (-1), or with weights from the future (the learner resumed
        # from an older checkpoint), the generator must load the current weights first.
        if not 0 <= held_version <= learner_version:
            return Denied("version")
        if not self.gate.can_issue(held_version):
            return Denied("gate")
        index = self.reissue.popleft() if self.reissue else next_prompt()
        # Every issue draws a fresh id, a re-issued prompt too: the old id stays dead.
        rec = self.leases.issue(
            index, holder, held_version, now, self.lease_seconds, self.group_size
        )
        self.gate.on_issue()
        return rec

    def on_leases_extended(self, holder: Holder, lease_ids: list[str], now: float) -> Counter[str]:
        """A heartbeat: `holder` is still working on these. Returns refusals by reason."""
        return self.leases.extend(holder, lease_ids, now, self.lease_seconds)

    def on_leases_returned(self, holder: Holder, lease_ids: list[str]) -> Counter[str]:
        """`holder` hands leases back unfinished (shutdown); their prompts go out again.
        Returns the refusals by reason (`wrong_holder`, `unknown_lease`; ids closed meanwhile
        are not counted)."""
        refused: Counter[str] = Counter()
        for lid in lease_ids:
            rec, why = self.leases.give_back(lid, holder)
            if rec is not None:
                self._end_without_group(rec, reissue=True)
            elif why in ("wrong_holder", "unknown_lease"):
                refused[why] += 1
        return refused

    def on_holder_moved(self, old: Holder, new: Holder) -> int:
        """The holder proved it is the same on a new connection: its leases follow it."""
        return self.leases.move_holder(old, new)

    def on_leases_expired(self, now: float) -> list[LeaseRecord]:
        """Leases past their deadline are reclaimed; their prompts go out again."""
        due = self.leases.expire_due(now)
        for rec in due:
            self._end_without_group(rec, reissue=True)
        return due

    def on_generator_lost(self, generator_id: str) -> list[LeaseRecord]:
        """A generator went silent: every lease it holds is reclaimed and re-issued."""
        recs = self.leases.reclaim_generator(generator_id)
        for rec in recs:
            self._end_without_group(rec, reissue=True)
        return recs

    # ------------------------------------------------------------ group events
    def on_group_received(self, lease_id: str, generator_id: str, key: str) -> LeaseRecord | str:
        """A group came back for `lease_id` from `generator_id` (with CURVE key `key`, "" without
        CURVE). Returns its lease, now being scored, or why it is not taken: `wrong_holder`
        (someone else's lease; theirs is left alone), `expired` (returned after reclaim),
        `duplicate` (already returned) or `unknown_lease` (never issued)."""
        rec, why = self.leases.complete(lease_id, generator_id, key)
        if rec is None:
            return why
        self.scoring[lease_id] = rec
        return rec

    def on_group_accepted(self, rec: LeaseRecord, group: BufferedGroup) -> list[Dropped]:
        """The scored group enters the buffer. Returns the groups evicted to make room."""
        del self.scoring[rec.lease_id]
        self.gate.on_accept()
        if self.journal is not None:
            self.journal.accepted(rec.lease_id, group.version)
        dropped = self.buffer.add(group)
        self._forget(dropped)
        return dropped

    def on_group_rejected(self, rec: LeaseRecord, cause: str) -> None:
        """The group did not enter the buffer, for `cause` (a key of `REISSUE`)."""
        del self.scoring[rec.lease_id]
        self._end_without_group(rec, reissue=REISSUE[cause])

    def on_groups_taken(
        self, n: int, learner_version: int
    ) -> tuple[list[BufferedGroup] | None, list[Dropped]]:
        """Take `n` groups for a step at `learner_version` (None if fewer remain trainable),
        and the groups dropped as stale on the way."""
        taken, dropped = self.buffer.sample(n, learner_version)
        self._forget(dropped)
        if taken is not None:
            # A reused group counted as consumed on its first use.
            self.consumed += sum(1 for g in taken if g.uses == 1)
            if self.journal is not None:
                self.journal.trained([g.lease_id for g in taken], learner_version)
        return taken, dropped

    # ------------------------------------------------------------ live tuning
    def on_staleness_limit_changed(self, max_staleness: int) -> None:
        """η changed on a live run. Raised: the gate admits more at once. Lowered: open leases
        run to their end and the buffer's guard drops, at the next take, what is then staler
        than the new η (counted `stale`, capacity freed), so nothing trained exceeds it."""
        if max_staleness < 0:
            raise ValueError("max_staleness must be >= 0")
        self.gate.max_staleness = max_staleness
        self.buffer.max_staleness = max_staleness

    def on_reuse_limit_changed(self, max_reuse: int) -> None:
        """Groups already used keep their use count; those a lower limit leaves no further
        use are retired at once (they were consumed: the gate still counts them accepted)."""
        if max_reuse < 0:
            raise ValueError("max_reuse must be >= 0")
        self.buffer.max_reuse = max_reuse
        self.buffer.retire_used()

    def on_group_size_changed(self, group_size: int) -> None:
        """Leases issued from now on ask for `group_size` samples; open ones keep theirs (each
        lease records its own, which its group is checked against)."""
        if group_size < 1:
            raise ValueError("group_size must be >= 1")
        self.group_size = group_size

    # ------------------------------------------------------------ checkpoint
    def state_dict(self, spill: Callable[[BufferedGroup], Any]) -> dict:
        """Gate counters, consumed count, prompts to send out again and the waiting groups (each
        through `spill`). Lease ids need no counter: they are random."""
        # Open leases and groups being scored die with the process: their prompts go out
        # again after a resume.
        pending = [*self.leases.open.values(), *self.scoring.values()]
        return {
            "gate": self.gate.state_dict(),
            "consumed": self.consumed,
            "reissue": list(self.reissue) + [r.prompt_index for r in pending],
            "waiting": [spill(g) for g in self.buffer.groups()],
        }

    def load_state_dict(self, state: dict, unspill: Callable[[Any], BufferedGroup]) -> None:
        self.consumed = int(state["consumed"])
        # Checkpoints before random lease ids carry "next_lease_id": nothing needs it now.
        self.reissue = deque(int(i) for i in state["reissue"])
        for item in state.get("waiting", []):
            # Restoring into a smaller buffer evicts: not counted, the gate is rebuilt below.
            self.buffer.add(unspill(item))
        self.gate.load_state_dict(state["gate"], len(self.buffer), self.consumed)

    # ------------------------------------------------------------ internals
    def _end_without_group(self, rec: LeaseRecord, reissue: bool) -> None:
        self.gate.on_lease_closed()
        if reissue:
            self.reissue.append(rec.prompt_index)

    def _forget(self, dropped: list[Dropped]) -> None:
        # Groups that left the buffer untrained free their capacity; a reused group was
        # already consumed once and keeps counting as accepted.
        self.gate.on_discard(sum(1 for d in dropped if d.group.uses == 0))
        if self.journal is not None:
            for d in dropped:
                self.journal.dropped(d.group.lease_id, d.reason)

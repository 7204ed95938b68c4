"""The ledger: events in, capacity out. After each event the expected counters are derived in a
comment from the gate rule `capacity(v) = (v + η + 1) * B - accepted - in_flight`."""

from __future__ import annotations

import itertools

from asyncrl.buffer.config import BufferConfig
from asyncrl.buffer.leases import Holder, LeaseRecord
from asyncrl.buffer.ledger import Denied, Ledger
from asyncrl.buffer.replay import BufferedGroup


def _ledger(eta=0, B=2, **buffer):
    cfg = BufferConfig(max_staleness=eta, lease_seconds=10.0, **buffer)
    return Ledger(cfg, groups_per_step=B, group_size=4)


def _counter(start=100):
    """Fresh prompt indices 100, 101, ..."""
    it = itertools.count(start)
    return lambda: next(it)


def _holder(gid: str) -> Holder:
    """The holder of generator `gid` on its connection (no CURVE)."""
    return Holder(gid, b"conn-" + gid.encode())


def _lease(led, gid="g0", held=0, learner=0, now=0.0, prompts=None) -> LeaseRecord:
    rec = led.on_lease_requested(_holder(gid), held, learner, now, prompts or _counter())
    assert isinstance(rec, LeaseRecord), rec
    return rec


def _return(led, rec, version=0, nbytes=10) -> BufferedGroup:
    """The group of `rec` comes back and is accepted; it was sampled at `version`."""
    assert led.on_group_received(rec.lease_id, rec.generator_id, "") is rec
    group = BufferedGroup(rec.lease_id, rec.prompt_index, version, nbytes)
    assert led.on_group_accepted(rec, group) == []
    return group


def test_issue_until_the_gate_closes_then_accept():
    led = _ledger(eta=0, B=2)
    prompts = _counter()
    # B=2, η=0, v=0: limit (0+0+1)*2 = 2; nothing issued: capacity 2.
    assert led.capacity(0) == 2
    a = _lease(led, prompts=prompts)
    b = _lease(led, prompts=prompts)
    # Two open leases on fresh prompts 100, 101: in_flight 2, capacity 2-0-2 = 0.
    assert (a.prompt_index, b.prompt_index) == (100, 101)
    assert (led.in_flight, led.capacity(0)) == (2, 0)
    assert led.on_lease_requested(_holder("g1"), 0, 0, 0.0, prompts) == Denied("gate")
    # A group back and being scored still holds its capacity: in_flight 2, capacity 0.
    assert led.on_group_received(a.lease_id, "g0", "") is a
    assert (led.in_flight, led.capacity(0)) == (2, 0)
    led.on_group_accepted(a, BufferedGroup(a.lease_id, a.prompt_index, 0, 10))
    # Accepted: in_flight 1, accepted 1, waiting 1; capacity still 2-1-1 = 0 at v=0,
    # and (1+0+1)*2 - 1 - 1 = 2 at v=1.
    assert (led.in_flight, led.accepted, led.waiting) == (1, 1, 1)
    assert (led.capacity(0), led.capacity(1)) == (0, 2)


def test_version_refusal():
    led = _ledger(eta=1, B=1)
    # No weights (-1) or weights newer than the learner's (3 > 2): refused as `version`
    # whatever the capacity ((2+1+1)*1 = 4 at v=2).
    assert led.on_lease_requested(_holder("g0"), -1, 2, 0.0, _counter()) == Denied("version")
    assert led.on_lease_requested(_holder("g0"), 3, 2, 0.0, _counter()) == Denied("version")
    assert led.in_flight == 0
    # An older generator (v=0 <= 2) is judged at its own version: limit (0+1+1)*1 = 2.
    _lease(led, held=0, learner=2)
    _lease(led, held=0, learner=2)
    assert led.on_lease_requested(_holder("g0"), 0, 2, 0.0, _counter()) == Denied("gate")
    # ...while one holding v=2 still gets one: 4 - 0 - 2 = 2.
    assert led.capacity(2) == 2
    _lease(led, held=2, learner=2)


def test_reject_with_and_without_reissue():
    led = _ledger(eta=0, B=3)
    prompts = _counter()
    a, b, c = (_lease(led, prompts=prompts) for _ in range(3))
    # limit (0+0+1)*3 = 3, three in flight: capacity 0.
    assert led.capacity(0) == 0
    for rec in (a, b, c):
        led.on_group_received(rec.lease_id, "g0", "")
    led.on_group_rejected(a, "invalid")  # malformed message: prompt 100 goes out again
    led.on_group_rejected(b, "filtered")  # zero variance: prompt 101 is spent
    led.on_group_rejected(c, "reward_timeout")  # reward overran: prompt 102 is spent
    # All three free their capacity (accepted 0, in_flight 0: capacity 3); only 100 re-issues.
    assert (led.accepted, led.in_flight, led.capacity(0)) == (0, 0, 3)
    assert list(led.reissue) == [100]
    # The next lease takes the queued prompt before a fresh one (103).
    assert _lease(led, prompts=prompts).prompt_index == 100
    assert _lease(led, prompts=prompts).prompt_index == 103


def test_reward_error_does_not_reissue():
    led = _ledger()
    rec = _lease(led)
    led.on_group_received(rec.lease_id, "g0", "")
    led.on_group_rejected(rec, "reward_error")
    # Capacity back to (0+0+1)*2 = 2, nothing to re-issue.
    assert (led.capacity(0), list(led.reissue)) == (2, [])


def test_expiry_return_and_lost_generator_reissue():
    led = _ledger(eta=0, B=4)
    prompts = _counter()
    a = _lease(led, "g0", now=0.0, prompts=prompts)  # deadline 10
    b = _lease(led, "g0", now=5.0, prompts=prompts)  # deadline 15
    c = _lease(led, "g1", now=5.0, prompts=prompts)  # deadline 15
    d = _lease(led, "g2", now=5.0, prompts=prompts)  # deadline 15
    # limit 4, four in flight: capacity 0.
    assert led.capacity(0) == 0
    # A heartbeat at t=8 pushes g0's lease b to 8+10 = 18; a (deadline 10) is not listed.
    assert led.on_leases_extended(_holder("g0"), [b.lease_id], 8.0) == {}
    # t=16: a (10), c and d (15) expire, b (18) does not: prompts 100, 102, 103 re-issue,
    # in_flight 1, capacity 4 - 0 - 1 = 3.
    expired = led.on_leases_expired(16.0)
    assert {r.lease_id for r in expired} == {a.lease_id, c.lease_id, d.lease_id}
    assert led.capacity(0) == 3
    assert sorted(led.reissue) == [100, 102, 103]
    # The late group of an expired lease is refused as `expired`, and frees nothing twice.
    assert led.on_group_received(c.lease_id, "g1", "") == "expired"
    assert led.capacity(0) == 3
    # g1 hands back a lease it does not hold (b is g0's): refused, nothing changes.
    assert led.on_leases_returned(_holder("g1"), [b.lease_id]) == {"wrong_holder": 1}
    assert led.capacity(0) == 3
    # g0 is lost: b (prompt 101) re-issues; in_flight 0, capacity 4.
    assert led.on_generator_lost("g0") == [b]
    assert (led.in_flight, led.capacity(0)) == (0, 4)
    assert sorted(led.reissue) == [100, 101, 102, 103]


def test_handed_back_lease_reissues_and_others_lease_is_left_alone():
    led = _ledger()
    rec = _lease(led, "g0")
    # g1 pushes a group under g0's lease id: refused as wrong_holder, g0's lease stays open.
    assert led.on_group_received(rec.lease_id, "g1", "") == "wrong_holder"
    assert led.holder(rec.lease_id) == _holder("g0") and led.in_flight == 1
    # A second connection claiming to be g0 can neither return nor extend it.
    impostor = Holder("g0", b"other-connection")
    assert led.on_leases_returned(impostor, [rec.lease_id]) == {"wrong_holder": 1}
    assert led.on_leases_extended(impostor, [rec.lease_id], 5.0) == {"wrong_holder": 1}
    assert led.leases.open[rec.lease_id].deadline == 10.0  # issued at 0 for 10 s
    assert led.on_leases_returned(_holder("g0"), [rec.lease_id]) == {}
    # Returned: capacity (0+0+1)*2 - 0 - 0 = 2, prompt 100 queued. A group arriving after
    # the hand-back is late (`expired`); an id never issued is an `unknown_lease`.
    assert (led.capacity(0), list(led.reissue)) == (2, [100])
    assert led.on_group_received(rec.lease_id, "g0", "") == "expired"
    assert led.on_group_received("f" * 32, "g0", "") == "unknown_lease"
    assert led.on_leases_returned(_holder("g0"), ["f" * 32]) == {"unknown_lease": 1}


def test_group_completes_only_with_the_holders_generator_and_key():
    led = _ledger()
    victim = Holder("g0", b"conn-a", key="KEY-A")
    rec = led.on_lease_requested(victim, 0, 0, 0.0, _counter())
    # Same generator id, another CURVE key: wrong_holder; no key at all: wrong_holder.
    assert led.on_group_received(rec.lease_id, "g0", "KEY-B") == "wrong_holder"
    assert led.on_group_received(rec.lease_id, "g0", "") == "wrong_holder"
    assert led.in_flight == 1 and rec.lease_id in led.leases.open
    # The id, the generator id and the key together complete it (a group arrives on a PULL
    # socket: no connection to compare), once; the copy is a duplicate.
    assert led.on_group_received(rec.lease_id, "g0", "KEY-A") is rec
    assert led.on_group_received(rec.lease_id, "g0", "KEY-A") == "duplicate"


def test_lease_ids_are_random_tokens_and_a_reissued_prompt_gets_a_fresh_one():
    led = _ledger(eta=0, B=1)
    a = _lease(led)
    # 128 random bits as 32 lowercase hex characters.
    assert len(a.lease_id) == 32 and int(a.lease_id, 16) >= 0 and a.lease_id == a.lease_id.lower()
    led.on_leases_expired(10.0)  # deadline 0 + 10: reclaimed, prompt 100 queued
    b = _lease(led, now=10.0)
    assert b.prompt_index == a.prompt_index == 100 and b.lease_id != a.lease_id
    # The first id stays dead: its late group is `expired`, it cannot complete the new lease.
    assert led.on_group_received(a.lease_id, "g0", "") == "expired"
    assert led.in_flight == 1


def test_a_reconnected_holder_keeps_its_leases():
    led = _ledger(eta=1, B=2)
    old, new = Holder("g0", b"conn-1"), Holder("g0", b"conn-2")
    a = led.on_lease_requested(old, 0, 0, 0.0, _counter())
    b = _lease(led, "g1")
    # Only g0's lease moves; afterwards the new connection extends it and the old cannot.
    assert led.on_holder_moved(old, new) == 1
    assert led.holder(a.lease_id) == new and led.holder(b.lease_id) == _holder("g1")
    assert led.on_leases_extended(old, [a.lease_id], 5.0) == {"wrong_holder": 1}
    assert led.on_leases_extended(new, [a.lease_id], 5.0) == {}
    assert led.leases.open[a.lease_id].deadline == 15.0  # 5 + 10


def test_stale_drop_frees_capacity():
    led = _ledger(eta=1, B=1)
    # limit at v=0: (0+1+1)*1 = 2. Two groups sampled at v=0 are accepted.
    g0 = _return(led, _lease(led), version=0)
    _return(led, _lease(led), version=0)
    assert (led.accepted, led.capacity(0)) == (2, 0)
    # At learner v=2 both have staleness 2 > η=1: dropped as stale, nothing taken;
    # accepted 0, capacity at v=2 = (2+1+1)*1 - 0 - 0 = 4.
    taken, dropped = led.on_groups_taken(1, 2)
    assert taken is None
    assert [(d.group.lease_id, d.reason) for d in dropped][0] == (g0.lease_id, "stale")
    assert len(dropped) == 2
    assert (led.accepted, led.waiting, led.consumed, led.capacity(2)) == (0, 0, 0, 4)


def test_taking_counts_consumed_and_reuse_keeps_capacity():
    led = _ledger(eta=1, B=1, max_reuse=1)
    a = _return(led, _lease(led), version=0)
    # accepted 1, waiting 1. Taken at v=0: first use, consumed 1; reuse keeps it waiting.
    taken, dropped = led.on_groups_taken(1, 0)
    assert taken == [a] and dropped == []
    assert (led.accepted, led.consumed, led.waiting) == (1, 1, 1)
    # Second use at v=1 (staleness 1 <= η): uses 2 > max_reuse 1, so it leaves the buffer;
    # consumed stays 1 (only first uses count).
    taken, _ = led.on_groups_taken(1, 1)
    assert taken == [a] and a.uses == 2
    assert (led.accepted, led.consumed, led.waiting) == (1, 1, 0)


def test_stale_drop_of_a_reused_group_keeps_its_capacity_spent():
    led = _ledger(eta=0, B=1, max_reuse=3)
    _return(led, _lease(led), version=0)
    led.on_groups_taken(1, 0)  # trained once (consumed 1), kept for reuse
    # At v=1 its staleness 1 > η=0: dropped as stale, but it was trained, so accepted stays 1:
    # capacity at v=1 = (1+0+1)*1 - 1 - 0 = 1.
    taken, dropped = led.on_groups_taken(1, 1)
    assert taken is None and [d.reason for d in dropped] == ["stale"]
    assert (led.accepted, led.consumed, led.capacity(1)) == (1, 1, 1)


def test_overflow_evicts_oldest_and_frees_its_capacity():
    led = _ledger(eta=3, B=1, max_groups=2)
    # limit (0+3+1)*1 = 4. Three groups accepted into a buffer of 2: the third evicts the first.
    recs = [_lease(led) for _ in range(3)]
    first = _return(led, recs[0])
    _return(led, recs[1])
    led.on_group_received(recs[2].lease_id, "g0", "")
    dropped = led.on_group_accepted(recs[2], BufferedGroup(recs[2].lease_id, 2, 0, 10))
    assert [(d.group, d.reason) for d in dropped] == [(first, "overflow")]
    # accepted 3 - 1 evicted = 2, in_flight 0, waiting 2: capacity 4 - 2 = 2.
    assert (led.accepted, led.in_flight, led.waiting, led.capacity(0)) == (2, 0, 2, 2)


def test_save_and_restore_without_capacity_inflation():
    led = _ledger(eta=2, B=2)
    prompts = _counter()
    # Five leases (limit (0+2+1)*2 = 6): two accepted, one being scored, two open;
    # one taken for a step (consumed 1).
    recs = [_lease(led, prompts=prompts) for _ in range(5)]  # prompts 100..104
    _return(led, recs[0])
    _return(led, recs[1])
    led.on_group_received(recs[2].lease_id, "g0", "")
    led.on_groups_taken(1, 0)
    assert (led.accepted, led.in_flight, led.consumed, led.waiting) == (2, 3, 1, 1)
    state = led.state_dict(spill=lambda g: (g.lease_id, g.prompt_index, g.version, g.nbytes))
    # The two open leases' prompts (103, 104), then the scored one's (102), go out again
    # after resume.
    assert state["reissue"] == [103, 104, 102]
    assert state["consumed"] == 1 and "next_lease_id" not in state
    restored = _ledger(eta=2, B=2)
    restored.load_state_dict(state, unspill=lambda t: BufferedGroup(*t))
    # accepted rebuilt as consumed 1 + waiting 1 = 2, in_flight 0 (the leases died):
    # capacity (0+2+1)*2 - 2 - 0 = 4, not 6 - 2 - 3 = 1 as saved counters would say.
    assert (restored.accepted, restored.in_flight, restored.waiting) == (2, 0, 1)
    assert restored.capacity(0) == 4
    # Re-issued prompts go first, under fresh random ids (none of the saved run's).
    rec = _lease(restored, prompts=prompts)
    assert rec.prompt_index == 103
    assert rec.lease_id not in {r.lease_id for r in recs}
    # A checkpoint written before random ids (it carries a counter) still loads.
    old = _ledger(eta=2, B=2)
    old.load_state_dict({**state, "next_lease_id": 6}, unspill=lambda t: BufferedGroup(*t))
    assert (old.accepted, old.in_flight, old.waiting) == (2, 0, 1)

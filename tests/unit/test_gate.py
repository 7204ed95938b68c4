"""The staleness gate: `accepted + in_flight < (v + η + 1) * B`."""

import pytest

from asyncrl.buffer.gate import StalenessGate
from asyncrl.buffer.leases import Holder, LeaseTable


def test_synchronous_eta0_issues_one_step_of_work():
    # B=2, η=0, v=0: limit = (0+0+1)*2 = 2 leases, the third is refused.
    g = StalenessGate(groups_per_step=2, max_staleness=0)
    assert g.can_issue(0)
    g.on_issue()
    g.on_issue()
    assert not g.can_issue(0)
    # Both return and are accepted: accepted=2, in_flight=0, still 2 >= 2 until v=1.
    g.on_accept()
    g.on_accept()
    assert not g.can_issue(0)
    # v=1: limit = (1+0+1)*2 = 4 > 2: two more.
    assert g.capacity(1) == 2


def test_eta2_lets_generation_run_ahead():
    # B=4, η=2, v=0: limit = 3*4 = 12 groups before any step.
    g = StalenessGate(4, 2)
    for _ in range(12):
        assert g.can_issue(0)
        g.on_issue()
    assert not g.can_issue(0)
    assert g.capacity(1) == 4  # (1+3)*4 - 0 - 12


def test_dropped_and_expired_release_capacity():
    g = StalenessGate(1, 0)
    g.on_issue()
    assert not g.can_issue(0)
    g.on_lease_closed()  # expired or dropped at intake: the prompt capacity is reused
    assert g.can_issue(0)
    g.on_issue()
    g.on_accept()
    g.on_discard()  # evicted before training
    assert g.accepted == 0 and g.can_issue(0)


def test_generator_version_is_what_counts():
    # A generator on version 0 while the learner is at 5: B=1, η=1, accepted 2:
    # limit at v=0 is (0+1+1)*1 = 2 -> refused; at v=5 it would be 7 -> allowed.
    g = StalenessGate(1, 1, accepted=2)
    assert not g.can_issue(0)
    assert g.can_issue(5)


def test_restore_rebuilds_from_what_exists():
    g = StalenessGate(2, 1, accepted=50, in_flight=3)
    # After a crash, 10 groups were consumed and 2 spilled groups came back: accepted = 12,
    # in-flight leases died with the process (0). No inflation from the saved 50.
    g.load_state_dict(g.state_dict(), waiting_restored=2, consumed=10)
    assert (g.accepted, g.in_flight) == (12, 0)


def test_invalid_use_raises():
    with pytest.raises(ValueError):
        StalenessGate(0, 1)
    with pytest.raises(ValueError):
        StalenessGate(1, -1)
    g = StalenessGate(1, 0)
    with pytest.raises(ValueError):
        g.on_accept()
    with pytest.raises(ValueError):
        g.on_discard()


def test_generators_joining_and_leaving_with_a_fake_clock():
    # B = 2, η = 1 at version 0: limit (0 + 1 + 1)·2 = 4 leases.
    gate, leases = StalenessGate(groups_per_step=2, max_staleness=1), LeaseTable()
    clock = 0.0
    held = []
    for _ in range(4):
        assert gate.can_issue(0)
        held.append(leases.issue(len(held), Holder("g0", b"c0"), 0, clock, 60.0, 4))
        gate.on_issue()
    assert not gate.can_issue(0)
    # g0 falls silent; two heartbeat intervals later the hub reclaims its leases, which frees
    # the capacity for a generator that joins now.
    clock += 4.0
    for _ in leases.reclaim_generator("g0"):
        gate.on_lease_closed()
    assert gate.in_flight == 0 and gate.can_issue(0)
    late = leases.issue(0, Holder("g1", b"c1"), 0, clock, 60.0, 4)
    gate.on_issue()
    # g0's late return is refused by lease id (never trained), g1's completes.
    assert leases.complete(held[0].lease_id, "g0", "") == (None, "expired")
    rec, why = leases.complete(late.lease_id, "g1", "")
    assert rec is not None and why == ""
    gate.on_accept()
    assert (gate.accepted, gate.in_flight) == (1, 0)
    # Capacity left at version 0: 4 - 1 accepted = 3.
    assert gate.capacity(0) == 3

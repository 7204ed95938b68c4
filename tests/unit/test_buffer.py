"""Replay buffer and lease table."""

import pytest

from asyncrl.buffer.leases import Holder, LeaseTable
from asyncrl.buffer.replay import BufferedGroup, ReplayBuffer


def _g(i, version, nbytes=10):
    return BufferedGroup(lease_id=i, prompt_index=i, version=version, nbytes=nbytes)


def test_sample_oldest_first_and_drop_stale():
    buf = ReplayBuffer(max_groups=10, max_bytes=1000, max_staleness=1)
    for i, v in enumerate([0, 1, 2, 2]):
        buf.add(_g(i, v))
    # At learner version 2 with η=1, group 0 (staleness 2) is stale; 1,2 come out in order.
    taken, dropped = buf.sample(2, version=2)
    assert [g.lease_id for g in taken] == [1, 2]
    assert [(d.group.lease_id, d.reason) for d in dropped] == [(0, "stale")]
    assert len(buf) == 1 and buf.nbytes == 10


def test_sample_waits_when_not_enough():
    buf = ReplayBuffer(10, 1000, 2)
    buf.add(_g(0, 0))
    taken, dropped = buf.sample(2, version=0)
    assert taken is None and dropped == [] and len(buf) == 1


def test_overflow_evicts_oldest_by_count_and_bytes():
    buf = ReplayBuffer(max_groups=2, max_bytes=25, max_staleness=5)
    assert buf.add(_g(0, 0)) == []
    assert buf.add(_g(1, 0)) == []
    # Third group: 3 > max_groups=2 -> evict group 0.
    assert [d.group.lease_id for d in buf.add(_g(2, 0))] == [0]
    # Adding group 3 (20 bytes) to [1, 2]: 3 groups > 2 -> evict 1; then 10 + 20 = 30 bytes
    # > 25 -> evict 2 as well; only the new group stays.
    assert [d.group.lease_id for d in buf.add(_g(3, 0, nbytes=20))] == [1, 2]
    assert buf.nbytes == 20


def test_reuse_keeps_group_for_max_reuse_more_steps():
    buf = ReplayBuffer(10, 1000, max_staleness=5, max_reuse=1)
    buf.add(_g(0, 0))
    first, _ = buf.sample(1, 0)
    second, _ = buf.sample(1, 0)
    third, _ = buf.sample(1, 0)
    # Used 1 + max_reuse = 2 times, then gone.
    assert first[0].lease_id == second[0].lease_id == 0 and third is None
    assert second[0].uses == 2


def test_leases_duplicate_expired_unknown_and_reclaim():
    ids = iter(["id-a", "id-b", "id-c", "id-b"])
    t = LeaseTable(new_id=lambda: next(ids))
    g0, g1, g2 = (Holder(g, g.encode()) for g in ("g0", "g1", "g2"))
    a = t.issue(prompt_index=5, holder=g0, version=0, now=100.0, duration=10.0, group_size=4)
    b = t.issue(6, g1, 0, 100.0, 10.0, 4)
    assert (a.lease_id, b.lease_id) == ("id-a", "id-b")
    rec, why = t.complete("id-a", "g0", "")
    assert rec.prompt_index == 5 and why == ""
    assert t.complete("id-a", "g0", "") == (None, "duplicate")
    # Lease b's deadline is 110; at 111 it expires and a late return says "expired".
    assert [r.lease_id for r in t.expire_due(111.0)] == ["id-b"]
    assert t.complete("id-b", "g1", "") == (None, "expired")
    assert t.complete("never", "g0", "") == (None, "unknown_lease")
    c = t.issue(7, g2, 1, 200.0, 10.0, 4)
    # Extended by its holder: 205 + 10; by g1 and for an unknown id: refused, counted.
    assert t.extend(g2, [c.lease_id], now=205.0, duration=10.0) == {}
    assert t.extend(g1, [c.lease_id, "never"], now=209.0, duration=10.0) == {
        "wrong_holder": 1,
        "unknown_lease": 1,
    }
    assert t.open[c.lease_id].deadline == 215.0
    assert [r.lease_id for r in t.reclaim_generator("g2")] == [c.lease_id]
    # An id source that repeats itself ("id-b" again) is refused rather than reused.
    with pytest.raises(RuntimeError, match="issued twice"):
        t.issue(8, g0, 1, 300.0, 10.0, 4)


def test_closed_lease_memory_is_bounded():
    t = LeaseTable(remember=2)
    h = Holder("g0", b"c")
    recs = [t.issue(i, h, 0, 0.0, 1.0, 1) for i in range(3)]
    for r in recs:
        t.complete(r.lease_id, "g0", "")
    # Only the last 2 closed ids are remembered: the first is now an unknown id.
    assert [t.why_closed(r.lease_id) for r in recs] == ["unknown_lease", "duplicate", "duplicate"]

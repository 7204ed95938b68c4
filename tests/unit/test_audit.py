"""The audit checker replays a story of crashes and resumes; expected verdicts derived by hand."""

from __future__ import annotations

import json

import pytest

from asyncrl.learner.audit import AuditLog, check_audit, read_events


def _start(resumed=None):
    return {"e": "start", "pid": 1, "resumed_from": resumed}


def _acc(lease, v=0):
    return {"e": "accepted", "lease": lease, "version": v}


def _trained(leases, step):
    return {"e": "trained", "leases": leases, "step": step}


def test_clean_run_is_ok():
    # a, b trained at step 1; c dropped stale; d still waiting at the finish: nothing lost.
    events = [
        _start(),
        _acc("a"),
        _acc("b"),
        _acc("c"),
        _acc("d"),
        _trained(["a", "b"], 1),
        {"e": "dropped", "lease": "c", "reason": "stale"},
        {"e": "finished", "waiting": ["d"]},
    ]
    r = check_audit(events)
    assert r.ok and (r.accepted, r.trained, r.dropped) == (4, 2, 1)


def test_kill_after_checkpoint_rolls_back_to_its_snapshot():
    # Incarnation 1: a trained, snapshot 1 taken with b waiting, c accepted while the
    # checkpoint is written (after the snapshot: not in it), checkpoint 1 completes, then
    # b and c trained at step 2 and the process is killed.
    # Incarnation 2 resumes from 1: history is cut right after the snapshot, so c's acceptance
    # and the step-2 training are undone (3 events: accepted c, checkpoint 1, trained [b, c]).
    # It trains b again (legitimately: the first time was undone), c's prompt comes back as e.
    events = [
        _start(),
        _acc("a"),
        _acc("b"),
        _trained(["a"], 1),
        {"e": "snapshot", "version": 1},
        _acc("c", 1),
        {"e": "checkpoint", "version": 1},
        _trained(["b", "c"], 2),
        _start(resumed=1),
        _acc("e", 1),
        _trained(["b", "e"], 2),
        {"e": "finished", "waiting": []},
    ]
    r = check_audit(events)
    assert r.rollbacks == [(1, 3)]
    assert r.ok and r.trained == 3 and r.incarnations == 2


def test_kill_mid_save_resumes_from_the_older_checkpoint():
    # Snapshot 2 never got its checkpoint (killed mid-save): the resume loads checkpoint 1,
    # so everything after snapshot 1 is undone (checkpoint 1, trained a, snapshot 2: 3 events).
    events = [
        _start(),
        _acc("a"),
        {"e": "snapshot", "version": 1},
        {"e": "checkpoint", "version": 1},
        _trained(["a"], 2),
        {"e": "snapshot", "version": 2},
        _start(resumed=1),
        _trained(["a"], 2),
        {"e": "finished", "waiting": []},
    ]
    r = check_audit(events)
    assert r.rollbacks == [(1, 3)] and r.ok


def test_detects_trained_twice_and_lost():
    # a trained at steps 1 and 2 with no resume between: twice. b accepted, never settled: lost.
    events = [
        _start(),
        _acc("a"),
        _acc("b"),
        _trained(["a"], 1),
        _trained(["a"], 2),
        {"e": "finished", "waiting": []},
    ]
    r = check_audit(events)
    assert r.trained_twice == ["a"] and r.lost == ["b"] and not r.ok
    # With one reuse allowed, two uses are fine.
    assert check_audit(events, max_reuse=1).trained_twice == []


def test_resume_from_a_checkpoint_never_completed_is_an_error():
    with pytest.raises(ValueError, match="version 3"):
        check_audit([_start(), {"e": "snapshot", "version": 3}, _start(resumed=3)])


def test_writer_round_trip_and_torn_last_line(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, resumed_from=None)
    log.accepted("a", 0)
    log.trained(["a"], 1)
    log.finished([])
    log.close()
    with path.open("a") as f:
        f.write('{"e": "accep')  # a kill -9 in the middle of a write
    events = read_events(path)
    assert [e["e"] for e in events] == ["start", "accepted", "trained", "finished"]
    assert check_audit(events).ok
    path.write_text('{"e": "start"\n' + json.dumps(_start()) + "\n")
    with pytest.raises(ValueError, match=":1:"):
        read_events(path)


def test_the_audit_command_prints_the_verdict_and_exits_by_it(tmp_path, capsys):
    from asyncrl.launch.cli import main

    assert main(["audit", str(tmp_path)]) == 2  # no log yet
    assert "no audit log" in capsys.readouterr().err
    log = AuditLog(tmp_path / "audit.jsonl", resumed_from=None)
    log.accepted("a", 0)
    log.finished([])
    log.close()
    # "a" was accepted and neither trained, dropped nor waiting: lost, exit 1.
    assert main(["audit", str(tmp_path)]) == 1
    assert json.loads(capsys.readouterr().out)["lost"] == ["a"]

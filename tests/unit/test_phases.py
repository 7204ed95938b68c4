"""A generator's wall time by phase (generators/phases.py)."""

from __future__ import annotations

import json

from asyncrl.generators.phases import PHASES, PhaseTimes


def test_other_is_the_wall_time_no_phase_claimed(tmp_path, monkeypatch):
    now = [100.0]
    monkeypatch.setattr("asyncrl.generators.phases.time.monotonic", lambda: now[0])
    p = PhaseTimes()
    p.add("generate", 6.0)
    with p.timed("weights"):
        now[0] += 1.5
    now[0] += 8.5  # 10 s of wall time in all
    snap = p.snapshot()
    # 10 - 6 (generate) - 1.5 (weights) = 2.5 s that no phase claimed.
    assert snap["wall"] == 10.0 and snap["weights"] == 1.5 and snap["other"] == 2.5
    assert set(PHASES) <= set(snap)
    p.write(str(tmp_path / "g.json"))
    written = json.loads((tmp_path / "g.json").read_text())
    timeline = written.pop("timeline")
    assert written == snap
    # The timeline's running totals (epoch seconds; the clock above is monotonic only): its
    # last point holds every phase's total so far.
    assert timeline[-1][1] == {k: snap[k] for k in PHASES if k != "other"} | {"other": 0.0}

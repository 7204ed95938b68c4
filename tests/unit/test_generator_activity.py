"""The generator's periodic INFO summary (weight loads themselves are DEBUG lines)."""

from __future__ import annotations

from asyncrl.generators.worker import Activity, format_activity


def test_summary_counts_groups_tokens_and_loads_by_transport():
    a = Activity(since=0.0, groups=12, tokens=3400, gate_wait=1.25)
    loads = [("from disk", 0.05), ("from disk", 0.07), ("in chunks", 0.3)]
    # 3400 tokens / 30 s = 113.3 tok/s; mean load (0.05 + 0.07 + 0.3) / 3 = 0.14 s.
    assert format_activity(30.0, a, 7, loads) == (
        "last 30s: 12 groups, 3400 tokens (113 tok/s), weights v7"
        " (3 loads: 2 from disk, 1 in chunks; mean 0.14s), gate wait 1.2s"
    )
    one = format_activity(2.0, Activity(since=0.0), 3, [("over nccl", 0.5)])
    assert "weights v3 (1 load: 1 over nccl; mean 0.50s)" in one
    assert format_activity(5.0, Activity(since=0.0), 0, []) == (
        "last 5s: 0 groups, 0 tokens (0 tok/s), weights v0, gate wait 0.0s"
    )

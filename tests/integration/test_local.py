"""`asyncrl local` end to end: real learner and generator processes over loopback."""

from __future__ import annotations

from tests.integration.conftest import run_cli


def test_local_run_advances_versions_within_staleness(small_overrides):
    eta = 1
    code, events, stderr = run_cli(
        [
            "local",
            *small_overrides,
            "train.steps=6",
            f"buffer.max_staleness={eta}",
            "local.generators=2",
        ],
        timeout=600,
    )
    assert code == 0, stderr[-4000:]
    kinds = [e["event"] for e in events]
    assert kinds == ["started", "summary"], kinds
    started, summary = events
    assert set(started["endpoints"]) == {"control", "rollouts", "weights"}
    assert set(started["metrics"]) == {"learner", "generator-0", "generator-1"}
    assert summary["policy_version"] == summary["steps"] == 6
    assert 0 <= summary["max_staleness_seen"] <= eta
    assert summary["max_staleness"] == eta
    # Rollouts arrived from every generator.
    assert summary["generators_seen"] == ["generator-0", "generator-1"]
    assert summary["accuracy_before"] is not None and summary["accuracy_after"] is not None

"""The acceptance run (slow): `asyncrl local` on the embedded default raises held-out accuracy
by at least 20 points within 10 minutes of RL, with consumed staleness within η."""

from __future__ import annotations

import pytest

from tests.integration.conftest import run_cli

pytestmark = pytest.mark.slow


def test_default_run_learns(tmp_path):
    code, events, stderr = run_cli(["local", f"learner.output_dir={tmp_path}"], timeout=1800)
    assert code == 0, stderr[-4000:]
    summary = events[-1]
    assert summary["event"] == "summary"
    assert summary["accuracy_after"] - summary["accuracy_before"] >= 0.20, summary
    assert summary["rl_seconds"] <= 600
    assert summary["max_staleness_seen"] <= summary["max_staleness"]

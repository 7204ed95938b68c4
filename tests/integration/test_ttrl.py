"""TTRL as published, end to end: `asyncrl local` with test-time training on the held-out
prompts, leases of N = 8 samples voted on and G = 4 kept, labels withheld from the reward."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.conftest import run_cli


def test_test_time_ttrl_votes_over_n_and_trains_on_g(small_overrides):
    code, events, stderr = run_cli(
        [
            "local",
            *small_overrides,
            "train.steps=3",
            "local.generators=1",
            "data.test_time=true",
            "reward.name=ttrl",
            "reward.ttrl.vote_size=8",
            "reward.ttrl.keep=stratified",
            "eval.functions=[exact]",
            # TTRL groups often agree entirely on the tiny task: keep them so steps come fast.
            "buffer.filter_zero_variance=false",
        ],
        timeout=600,
    )
    assert code == 0, stderr[-4000:]
    summary = events[-1]
    # Groups of 8 samples were accepted for leases of 8 (intake refuses any other size) and
    # the learner trained on them: 3 steps of 4 groups.
    assert summary["policy_version"] == 3
    assert sum(summary["staleness_counts"].values()) >= 3 * 4
    # Accuracy on the very prompts trained on (the 32 held-out rows), before and after.
    assert summary["accuracy_before"] is not None and summary["accuracy_after"] is not None
    run_dir = next(a.split("=", 1)[1] for a in small_overrides if a.startswith("learner.output"))
    lines = [json.loads(x) for x in Path(run_dir, "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "loss" in x]
    assert len(steps) == 3
    for x in steps:
        # The withheld labels still feed the pseudo-label metrics; each is a fraction.
        for name in ("ttrl_majority_frac", "ttrl_label_accuracy", "ttrl_reward_accuracy"):
            assert 0.0 <= x[name] <= 1.0, (name, x)
    assert "Traceback" not in stderr

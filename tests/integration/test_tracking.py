"""Experiment tracking end to end: a learner and a generator launched separately train a few
steps with `learner.report_to=[jsonl,tensorboard]`; the JSONL log and the TensorBoard event
files hold every statistic the learner computes, the learner prints its progress lines and
its own `summary` event, and the generator summarises instead of logging every weight load."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from asyncrl.protocol.sockets import free_ports
from tests.integration.conftest import REPO, next_event, start_cli

STEPS = 3

# What each step reports, by origin (learner/step.py, objectives, advantages, the TTRL
# reward, the step loop and the tracker's own throughput figures).
STEP_STATS = {
    # objective (loss terms, clip fractions, IS weights, KL, entropy) and optimizer
    "loss", "clip_frac_low", "clip_frac_high", "clip_frac_dual", "clip_fraction",
    "ratio_mean", "is_weight_mean", "is_weight_max", "masked_frac", "kl", "entropy",
    "grad_norm", "lr",
    # rewards and advantages
    "reward_mean", "reward_extracted_frac", "ttrl_majority_frac", "ttrl_label_accuracy",
    "adv_mean", "adv_std", "adv_abs_max", "adv_zero_std_groups",
    # staleness and throughput
    "staleness_mean", "staleness_max", "response_tokens", "tokens_per_second",
    "step_seconds", "buffer_groups_waiting", "generation_tokens_per_second",
}  # fmt: skip


def test_trackers_hold_every_statistic(small_overrides, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    control, rollouts, weights = free_ports(3)
    common = [
        *small_overrides,
        f"learner.control_port={control}",
        f"learner.rollouts_port={rollouts}",
        f"learner.weights_port={weights}",
        "learner.metrics_port=0",
        "learner.report_to=[jsonl,tensorboard]",
        f"train.steps={STEPS}",
        "eval.every=2",
        "reward.name=ttrl",
        # TTRL groups often agree entirely on the tiny task: keep them so steps come fast.
        "buffer.filter_zero_variance=false",
    ]
    out = Path(next(a.split("=", 1)[1] for a in common if a.startswith("learner.output")))
    learner = start_cli(["learner", *common], tmp_path / "learner.log")
    generator = None
    try:
        next_event(learner, "learner_ready")
        generator = start_cli(
            [
                "generator",
                *common,
                f"generator.learner=tcp://127.0.0.1:{control}",
                "generator.metrics_port=0",
                "generator.generator_id=gen-a",
            ],
            tmp_path / "generator.log",
        )
        summary = next_event(learner, "summary")
        learner.wait(timeout=120)
    finally:
        for p in (learner, generator):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
    learner_log = (tmp_path / "learner.log").read_text()
    assert learner.returncode == 0, learner_log[-4000:]
    # The learner's own summary event is the one it writes to summary.json.
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["policy_version"] == STEPS

    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    by_step: dict[int, dict] = {}
    for line in lines:
        by_step.setdefault(line["step"], {}).update(line)
    assert sorted(by_step) == list(range(STEPS + 1))
    for step in range(1, STEPS + 1):
        missing = STEP_STATS - set(by_step[step])
        assert not missing, (step, missing)
        assert math.isfinite(by_step[step]["grad_norm"]) and by_step[step]["grad_norm"] > 0
    # Held-out accuracy before RL, at eval_every, and after RL.
    evals = [s for s in by_step if by_step[s].get("eval_accuracy") is not None]
    assert evals == [0, 2, 3], evals

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    jsonl_names = {k for line in lines for k, v in line.items() if v is not None} - {
        "step",
        "time",
    }
    assert set(acc.Tags()["scalars"]) == jsonl_names
    assert [e.step for e in acc.Scalars("loss")] == list(range(1, STEPS + 1))
    assert [e.step for e in acc.Scalars("eval_accuracy")] == [0, 2, 3]

    # Progress lines: the first and the last step at least, with total, rate and ETA.
    progress = re.findall(
        r"step (\d+)/3 \| \d+ tok/s \| reward \S+ \| staleness .* \| eta ", learner_log
    )
    assert "1" in progress and "3" in progress, learner_log[-3000:]
    assert "Traceback" not in learner_log

    gen_log = (tmp_path / "generator.log").read_text()
    assert "loaded weights version" not in gen_log  # DEBUG only
    assert re.search(r"last \d+s: \d+ groups, \d+ tokens .* loads?: \d+ in chunks", gen_log), (
        gen_log[-3000:]
    )


def test_a_tracker_without_its_package_is_one_line_before_anything_loads(tmp_path):
    # sys.modules[name] = None makes the package absent for find_spec and import alike.
    code = (
        "import sys; sys.modules['wandb'] = None; "
        "from asyncrl.launch.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "learner",
            f"learner.output_dir={tmp_path}",
            "learner.report_to=[wandb]",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        "asyncrl learner: learner.report_to lists wandb but the wandb package is not installed "
        "(pip install 'asyncrl[wandb]')"
    ]
    assert proc.stdout == ""

"""A new user's run, end to end, with nothing that needs reading the code: their own Hugging
Face model directory (with a chat template), a JSONL of chat prompts with a `solution` column,
and one YAML naming TRL's own `accuracy_reward` and `think_format_reward` with weights; the
learner and a generator launched separately from that YAML.

Both exit 0 at the end (the generator because the learner announced the finish); the learner
prints its summary; the held-out evaluation is scored by the same reward functions and reports
reward, accuracy and pass@k; the JSONL log and the TensorBoard event files hold every
statistic, rewards by function included.

Left out: whether RL improves anything here (TRL's accuracy reward wants a boxed answer the
tiny model never writes, so rewards are mostly 0; tests/integration/test_learning_curve.py
measures learning).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from asyncrl.protocol.sockets import free_ports
from tests.integration.conftest import next_event, start_cli

STEPS = 3
# What a user's chat model has; the tiny model's character tokenizer reads the content alone.
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def _user_files(tiny_cache: str, tmp: Path) -> tuple[Path, Path, Path]:
    """A model directory with a chat template, and train/eval JSONL of chat prompts with a
    `solution` column, made from the tiny task's files as a user would bring their own."""
    built = next(Path(tiny_cache).glob("tiny-*"))
    model = tmp / "my-model"
    shutil.copytree(built / "model", model)
    tok_cfg = json.loads((model / "tokenizer_config.json").read_text())
    tok_cfg["chat_template"] = CHAT_TEMPLATE
    (model / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    out = []
    for name in ("train", "eval"):
        rows = [json.loads(x) for x in (built / f"{name}.jsonl").read_text().splitlines()]
        path = tmp / f"my-{name}.jsonl"
        with path.open("w") as f:
            for r in rows[:64]:
                prompt = [{"role": "user", "content": r["prompt"]}]
                f.write(json.dumps({"prompt": prompt, "solution": r["answer"]}) + "\n")
        out.append(path)
    return model, out[0], out[1]


def test_own_model_data_and_trl_rewards_end_to_end(tiny_cache, tmp_path):
    pytest.importorskip("trl")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, train, evals = _user_files(tiny_cache, tmp_path)
    control, rollouts, weights = free_ports(3)
    out = tmp_path / "run"
    (tmp_path / "run.yaml").write_text(
        f"""
model:
  path: {model}
data:
  train_path: {train}
  eval_path: {evals}
  eval_size: 16
sampling:
  group_size: 4
  max_new_tokens: 8
train:
  steps: {STEPS}
  groups_per_step: 2
  lr: 2.0e-4
eval:
  every: 2
  samples: 2
reward:
  functions: ["trl.rewards:accuracy_reward", "trl.rewards:think_format_reward"]
  weights: [1.0, 0.5]
  answer_field: solution  # the label column: accuracy is reported over rows that have it
buffer:
  filter_zero_variance: false
learner:
  output_dir: {out}
  control_port: {control}
  rollouts_port: {rollouts}
  weights_port: {weights}
  metrics_port: 0
  metrics_linger_seconds: 0
  report_to: [jsonl, tensorboard]
generator:
  learner: tcp://127.0.0.1:{control}
  metrics_port: 0
  generator_id: my-gen
  metrics_linger_seconds: 0
"""
    )
    config = ["--config", str(tmp_path / "run.yaml")]
    learner = start_cli(["learner", *config], tmp_path / "learner.log")
    generator = None
    try:
        ready = next_event(learner, "learner_ready")
        generator = start_cli(["generator", *config], tmp_path / "generator.log")
        summary = next_event(learner, "summary")
        learner.wait(timeout=120)
        generator.wait(timeout=120)
    finally:
        for p in (learner, generator):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    learner_log = (tmp_path / "learner.log").read_text()
    gen_log = (tmp_path / "generator.log").read_text()
    assert learner.returncode == 0, learner_log[-4000:]
    assert generator.returncode == 0, gen_log[-4000:]
    assert "Traceback" not in learner_log + gen_log
    assert "finished its run" in gen_log and "reconnecting" not in gen_log

    assert summary["policy_version"] == STEPS and summary["generators_seen"] == ["my-gen"]
    # Held-out figures from the configured reward, before and after RL.
    assert summary["accuracy_before"] is not None and summary["accuracy_after"] is not None
    assert ready["accuracy_before"] == summary["accuracy_before"]

    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    stats = {k for line in lines for k, v in line.items() if v is not None}
    for name in (
        "loss",
        "kl",
        "entropy",
        "grad_norm",
        "reward_mean",
        "adv_std",
        "staleness_max",
        "tokens_per_second",
        "eval_reward_mean",
        "eval_accuracy",
        "eval_pass_at_k",
    ):
        assert name in stats, (name, sorted(stats))
    # One mean per reward function (names from the plug-in's function name).
    assert any("accuracy_reward" in k for k in stats), sorted(stats)
    assert any("think_format_reward" in k for k in stats), sorted(stats)
    evaluated = [line["step"] for line in lines if line.get("eval_pass_at_k") is not None]
    assert evaluated == [0, 2, STEPS], evaluated

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == stats - {"step", "time"}
    assert (out / "export" / "config.json").is_file()
    proc = subprocess.run(["ls", str(out / "checkpoint")], capture_output=True, text=True)
    assert "latest" in proc.stdout

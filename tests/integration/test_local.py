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
    # Every consumed group is in the staleness counts, none beyond η.
    counts = {int(k): v for k, v in summary["staleness_counts"].items()}
    assert sum(counts.values()) >= 6 * 4 and max(counts) <= eta


def test_export_loads_with_from_pretrained_and_generates(small_overrides, tmp_path):
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    code, _, stderr = run_cli(["local", *small_overrides, "train.steps=2"], timeout=600)
    assert code == 0, stderr[-4000:]
    run_dir = next(a.split("=", 1)[1] for a in small_overrides if a.startswith("learner.output"))
    export = f"{run_dir}/export"
    assert json.load(open(f"{export}/asyncrl_version.json"))["policy_version"] == 2
    model = AutoModelForCausalLM.from_pretrained(export)
    tok = AutoTokenizer.from_pretrained(export)
    ids = tok("12+7=", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids.shape[1]
    # The export holds the trained weights, not the warm-start model's.
    from asyncrl.launch.config import load_config
    from asyncrl.launch.tiny import setup_tiny_assets

    start = AutoModelForCausalLM.from_pretrained(
        setup_tiny_assets(load_config(None, small_overrides).tiny).model_path
    )
    moved = max(
        float((a - b).abs().max())
        for a, b in zip(model.state_dict().values(), start.state_dict().values())
    )
    assert moved > 0
    assert isinstance(model, torch.nn.Module)


def test_disk_weight_transport(small_overrides, tmp_path):
    shared = tmp_path / "shared-weights"
    code, events, stderr = run_cli(
        [
            "local",
            *small_overrides,
            "train.steps=4",
            "local.generators=1",
            "learner.weights.type=disk",
            f"learner.weights.dir={shared}",
        ],
        timeout=600,
    )
    assert code == 0, stderr[-4000:]
    assert events[-1]["policy_version"] == 4
    # Generators loaded versions from the shared directory, not over ZeroMQ.
    assert "from disk" in stderr and "fetching chunks" not in stderr
    # Only the newest two versions are kept, each a loadable model directory.
    assert sorted(p.name for p in shared.iterdir()) == ["v3", "v4"]
    assert (shared / "v4" / "model.safetensors").exists()
    assert (shared / "v4" / "config.json").exists()


def test_a_failing_reward_drops_its_group_and_training_goes_on(small_overrides):
    code, events, stderr = run_cli(
        [
            "local",
            *small_overrides,
            "train.steps=4",
            "local.generators=1",
            "reward.name=plugin",
            "reward.plugin=tests.integration.flaky_reward:score",
        ],
        timeout=600,
    )
    assert code == 0, stderr[-4000:]
    assert events[-1]["policy_version"] == 4
    assert "reward failed" in stderr


def test_deferred_evaluation_is_recorded_at_its_step(small_overrides):
    import json
    from pathlib import Path

    run_dir = next(o.split("=", 1)[1] for o in small_overrides if o.startswith("learner.output"))
    code, events, stderr = run_cli(
        [
            "local",
            *small_overrides,
            "train.steps=4",
            "eval.every=2",
            "eval.deferred=true",
            "learner.report_to=[jsonl]",
        ],
        timeout=600,
    )
    assert code == 0, stderr[-4000:]
    summary = events[-1]
    records = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_accuracy" in r]
    # Before RL (step 0), the copy taken at step 2 (evaluated after the run, with the loop's
    # seconds at the copy), and the final weights (step 4) last.
    assert [r["step"] for r in evals] == [0, 2, 4], evals
    assert 0 < evals[1]["rl_elapsed_seconds"] < summary["rl_seconds"]
    assert "rl_elapsed_seconds" not in evals[2]
    # The final evaluation scored the restored final weights, as the summary reports.
    assert evals[2]["eval_accuracy"] == summary["accuracy_after"]
    # No step record paused for an evaluation.
    assert not any("eval_seconds" in r for r in records)

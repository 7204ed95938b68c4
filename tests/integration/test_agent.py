"""Multi-turn tool-use rollouts end to end: `asyncrl local --config tiny-agent-cpu` (shrunk)
with real learner and generator processes: episodes with masked tool results are generated,
validated, trained on, and the held-out evaluation plays whole episodes."""

from __future__ import annotations

from tests.integration.conftest import run_cli

SMALL_AGENT = [
    "tiny.n_train=64",
    "tiny.n_eval=8",
    "tiny.n_sft=64",
    "tiny.sft_steps=12",
    "tiny.sft_noise_steps=6",
    "tiny.sft_batch_size=8",
]


def test_agent_task_trains_on_episodes(tmp_path):
    code, events, stderr = run_cli(
        [
            "local",
            "--config",
            "tiny-agent-cpu",
            *SMALL_AGENT,
            f"tiny.cache_dir={tmp_path / 'cache'}",
            f"learner.output_dir={tmp_path / 'run'}",
            "train.steps=2",
            "train.max_seconds=0",
            "train.groups_per_step=2",
            "sampling.group_size=4",
            "eval.every=0",
            "data.eval_size=8",
            "local.generators=1",
            # A 12-step warm start solves nothing yet: keep its all-zero groups.
            "buffer.filter_zero_variance=false",
            "learner.metrics_linger_seconds=0",
            "generator.metrics_linger_seconds=0",
        ],
        timeout=600,
    )
    assert code == 0, stderr[-4000:]
    summary = events[-1]
    assert summary["event"] == "summary" and summary["steps"] == 2
    # Held-out episodes ran through the calculator environment (scored, with call outcomes).
    assert summary["accuracy_before"] is not None and summary["accuracy_after"] is not None
    assert 0.0 <= summary["tool_call_success_before"] <= 1.0
    # No group was refused at intake: masks, env logprobs and finish reasons validate.
    assert "invalid" not in stderr and "bad_mask" not in stderr, stderr[-4000:]

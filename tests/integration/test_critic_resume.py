"""A learner with a learned critic killed with SIGKILL resumes both models.

`asyncrl learner` (advantage.name=gae, value pre-training for the first steps) and one
generator; the learner is killed without warning after its first checkpoints, restarted with
`--resume`, and must load the critic's state from the checkpoint next to the policy's, train
both on to the end and save and export both.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from asyncrl.learner import ckpt_files as cf
from asyncrl.protocol.sockets import free_ports
from tests.integration.conftest import REPO, next_event, scrape, start_cli

CHECKPOINT_EVERY, ETA, B = 2, 2, 4


def _version(metrics_url: str) -> float:
    try:
        return scrape(metrics_url, timeout=2).get("asyncrl_policy_version", -1.0)
    except OSError:
        return -1.0


def test_sigkill_then_resume_with_critic(small_overrides, tmp_path):
    import torch
    from safetensors.torch import load_file

    control, rollouts, weights, metrics = free_ports(4)
    common = [
        *small_overrides,
        f"learner.control_port={control}",
        f"learner.rollouts_port={rollouts}",
        f"learner.weights_port={weights}",
        f"learner.metrics_port={metrics}",
        f"train.groups_per_step={B}",
        f"buffer.max_staleness={ETA}",
        f"train.checkpoint_every={CHECKPOINT_EVERY}",
        "advantage.name=gae",
        "critic.lr=1e-3",
        "critic.pretrain_steps=1",
        # Every group is trained on (the small warm start rarely solves one): steps come as
        # fast as the generator samples.
        "buffer.filter_zero_variance=false",
    ]
    output_dir = tmp_path / "run"
    learner = start_cli(["learner", *common, "train.steps=40"], tmp_path / "learner-1.log")
    generator = None
    try:
        first = next_event(learner, "learner_ready")
        assert first["policy_version"] == 0 and not first["resumed"]
        generator = start_cli(
            [
                "generator",
                *common,
                f"generator.learner=tcp://127.0.0.1:{control}",
                "generator.metrics_port=0",
                "generator.generator_id=gen-a",
                "generator.reconnect_seconds=3",
            ],
            tmp_path / "generator.log",
        )
        url = f"http://127.0.0.1:{metrics}/metrics"
        deadline = time.time() + 300
        while _version(url) < 3 and time.time() < deadline:
            time.sleep(0.2)
        assert _version(url) >= 3, "learner did not reach version 3"
        learner.send_signal(signal.SIGKILL)
        learner.wait(timeout=30)
        tag = (output_dir / "checkpoint" / "latest").read_text().strip()
        saved = cf.tag_version(tag)
        assert saved >= 2 and (output_dir / "checkpoint" / tag / "critic").is_dir()
        # The critic's weights as the resume will load them: from the checkpoint itself (its
        # export may not exist, since the kill can land after the checkpoint's pointer was
        # written and before its export was). Below ZeRO-3 the module is saved whole.
        states = output_dir / "checkpoint" / tag / "critic" / "mp_rank_00_model_states.pt"
        before = torch.load(states, map_location="cpu", weights_only=False)["module"]

        steps = saved + 2
        learner = start_cli(
            ["learner", *common, f"train.steps={steps}", "--resume"], tmp_path / "learner-2.log"
        )
        again = next_event(learner, "learner_ready")
        assert again["resumed"] and again["policy_version"] == saved
        learner.wait(timeout=300)
        log = (tmp_path / "learner-2.log").read_text()
        assert learner.returncode == 0, log[-4000:]
    finally:
        for p in (learner, generator):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
    assert f"resumed the critic from {output_dir / 'checkpoint' / tag / 'critic'}" in log
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["policy_version"] == steps and summary["steps"] == 2
    # Both models saved and exported at the end; the critic trained on after the resume
    # (its final weights moved away from the checkpoint's), with every value statistic.
    ckpt = output_dir / "checkpoint"
    last = cf.read_pointer(ckpt)
    assert cf.tag_version(last) == steps and (ckpt / last / "critic").is_dir()
    stamp = json.loads((output_dir / "export" / "critic" / "asyncrl_version.json").read_text())
    assert stamp["policy_version"] == steps
    after = load_file(output_dir / "export" / "critic" / "model.safetensors")
    assert after.keys() == before.keys() and "score.weight" in after
    assert any(not after[k].equal(before[k]) for k in after)
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    # `asyncrl export` rebuilds both models from the checkpoint alone.
    args = ["export", "--checkpoint", str(ckpt), "--output", str(tmp_path / "x")]
    proc = subprocess.run(
        [sys.executable, "-m", "asyncrl.launch.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rebuilt = load_file(tmp_path / "x" / "critic" / "model.safetensors")
    assert rebuilt.keys() == after.keys() and all(rebuilt[k].equal(after[k]) for k in after)
    trained = [r for r in rows if "value_loss" in r]
    assert [r["step"] for r in trained[-2:]] == [saved + 1, saved + 2]
    # Each trained step once: what the killed run logged past the checkpoint was rolled back.
    steps_logged = [r["step"] for r in trained]
    assert steps_logged == sorted(set(steps_logged))
    assert all("value_explained_variance" in r and "loss" in r for r in trained[-2:])

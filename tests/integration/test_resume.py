"""A learner killed with SIGKILL mid-run resumes from its last checkpoint.

Separate `asyncrl learner` and `asyncrl generator` processes on fixed loopback ports; the
learner is killed without warning after its first checkpoints, restarted with `--resume` on
the same ports, and must continue the version sequence from the checkpoint with gate
counters rebuilt from what exists (no capacity inflation), while the generator reconnects by
itself and training runs to the end.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from asyncrl.learner import ckpt_files as cf
from asyncrl.protocol.sockets import free_ports
from tests.integration.conftest import REPO, next_event, scrape, start_cli

STEPS, ETA, B = 30, 2, 4


def _version(metrics_url: str) -> float:
    try:
        return scrape(metrics_url, timeout=2).get("asyncrl_policy_version", -1.0)
    except OSError:
        return -1.0


def test_sigkill_then_resume(small_overrides, tmp_path):
    control, rollouts, weights, metrics = free_ports(4)
    common = [
        *small_overrides,
        f"learner.control_port={control}",
        f"learner.rollouts_port={rollouts}",
        f"learner.weights_port={weights}",
        f"learner.metrics_port={metrics}",
        f"train.steps={STEPS}",
        f"train.groups_per_step={B}",
        f"buffer.max_staleness={ETA}",
        "train.checkpoint_every=3",
    ]
    output_dir = Path(next(a.split("=", 1)[1] for a in common if a.startswith("learner.output")))
    learner = start_cli(["learner", *common], tmp_path / "learner-1.log")
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
        while _version(url) < 8 and time.time() < deadline:
            time.sleep(0.2)
        assert _version(url) >= 8, "learner did not reach version 8"
        learner.send_signal(signal.SIGKILL)
        learner.wait(timeout=30)
        tag = (output_dir / "checkpoint" / "latest").read_text().strip()
        saved = int(tag.lstrip("v"))
        assert saved >= 6 and saved % 3 == 0

        learner = start_cli(["learner", *common, "--resume"], tmp_path / "learner-2.log")
        again = next_event(learner, "learner_ready")
        # The version sequence continues from the checkpoint, never from 0.
        assert again["resumed"] and again["policy_version"] == saved
        gate = again["gate"]
        # Leases open at the kill died with it; accepted is rebuilt from what exists.
        assert gate["in_flight"] == 0
        assert gate["accepted"] == gate["consumed"] + gate["waiting"]
        assert gate["accepted"] <= (saved + ETA + 1) * B
        learner.wait(timeout=600)
        assert learner.returncode == 0, (tmp_path / "learner-2.log").read_text()[-4000:]
    finally:
        for p in (learner, generator):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["policy_version"] == STEPS
    assert summary["steps"] == STEPS - saved
    assert summary["max_staleness_seen"] <= ETA
    # The same generator process served both learner lifetimes: it reconnected by itself.
    assert summary["generators_seen"] == ["gen-a"]
    _check_layout(output_dir, tmp_path)


def _check_layout(output_dir: Path, tmp_path: Path) -> None:
    """The newest train.keep_checkpoints (2) checkpoints, each with its HF export, the final
    one also directly in export/; `asyncrl export` rebuilds the same weights from it."""
    from safetensors.torch import load_file

    ckpt, export = output_dir / "checkpoint", output_dir / "export"
    tags = cf.complete_tags(ckpt)
    assert len(tags) == 2 and cf.read_pointer(ckpt) == tags[-1]
    assert cf.tag_version(tags[-1]) == STEPS
    assert cf.complete_tags(export) == tags
    stamp = json.loads((export / "asyncrl_version.json").read_text())
    assert stamp["policy_version"] == STEPS
    final = load_file(export / "model.safetensors")
    args = ["export", "--checkpoint", str(ckpt), "--output", str(tmp_path / "x")]
    proc = subprocess.run(
        [sys.executable, "-m", "asyncrl.launch.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str(tmp_path / "x")  # the path alone
    rebuilt = load_file(tmp_path / "x" / "model.safetensors")
    assert rebuilt.keys() == final.keys()
    assert all(rebuilt[k].equal(final[k]) for k in final)

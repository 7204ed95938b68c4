"""`asyncrl_grad_norm` is measured at every ZeRO stage (it was NaN at stage 0: DeepSpeed
reports a norm only through its own optimizer wrappers, and a bare torch optimizer at stage 0
has none).

With plain SGD, no clipping and no warmup, one optimizer step moves the parameters by
lr x gradient, so the true gradient norm is |Δθ| / lr: each stage's reported norm is checked
against that, not against another reported value."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import REPO

WORKER = Path(__file__).with_name("grad_norm_worker.py")
LR = 0.5


def step(model: str, out: Path, overrides: list[str]) -> dict:
    cmd = [sys.executable, str(WORKER), "--model", model, "--out", str(out), *overrides]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("stage", [0, 2])
def test_grad_norm_is_the_gradient_norm_at_every_stage(tiny_causal_lm, tmp_path, stage):
    got = step(
        tiny_causal_lm,
        tmp_path / "norm.json",
        [f"train.zero_stage={stage}", f"train.lr={LR}", "train.grad_clip=0"],
    )
    assert math.isfinite(got["grad_norm"]) and got["grad_norm"] > 0, got
    assert got["grad_norm"] == pytest.approx(got["delta_norm"] / LR, rel=1e-4), got


def test_grad_norm_at_stage_0_is_measured_before_clipping(tiny_causal_lm, tmp_path):
    free = step(
        tiny_causal_lm,
        tmp_path / "free.json",
        ["train.zero_stage=0", f"train.lr={LR}", "train.grad_clip=0"],
    )
    # A clip far below the norm: the update is lr x clip in norm, the report the unclipped
    # norm of the same batch from the same weights.
    clip = free["grad_norm"] / 10
    clipped = step(
        tiny_causal_lm,
        tmp_path / "clipped.json",
        ["train.zero_stage=0", f"train.lr={LR}", f"train.grad_clip={clip}"],
    )
    assert clipped["grad_norm"] == pytest.approx(free["grad_norm"], rel=1e-5)
    assert clipped["delta_norm"] == pytest.approx(LR * clip, rel=1e-3)

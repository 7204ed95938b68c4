"""Data-parallel exactness: the same batch trained whole, in micro-batches, on 2 gloo ranks
and on 2 ranks with ZeRO-3 gives the same parameters (token-mean is split-invariant and the
engine undoes DeepSpeed's averaging)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asyncrl.protocol.sockets import free_port
from tests.integration.conftest import REPO

WORKER = Path(__file__).with_name("dist_worker.py")


@pytest.fixture
def tiny_model(tiny_causal_lm) -> str:
    return tiny_causal_lm


def train(model: str, out: Path, world: int, overrides: list[str], worker: Path = WORKER) -> dict:
    cmd = [sys.executable, str(worker), "--model", model, "--out", str(out), *overrides]
    if world > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={world}",
            # torchrun's static rendezvous does not resolve port 0 for the workers: pick one.
            f"--master-port={free_port()}",
            *cmd[1:],
        ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out)


def test_layouts_agree(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    initial = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    whole = train(tiny_model, tmp_path / "whole.pt", 1, ["train.micro_batch_size=8"])
    moved = max(float((whole[k] - initial[k]).abs().max()) for k in whole)
    assert moved > 1e-4, "SGD did not change the parameters: the comparison would be vacuous"
    layouts = {
        "micro-batches": (1, ["train.micro_batch_size=3"]),
        "2 ranks": (2, ["train.micro_batch_size=2"]),
        "2 ranks ZeRO-3": (2, ["train.micro_batch_size=4", "train.zero_stage=3"]),
        "2 mini-batches": (1, ["train.micro_batch_size=8", "train.mini_batches=2"]),
    }
    results = {}
    for name, (world, overrides) in layouts.items():
        results[name] = train(tiny_model, tmp_path / f"{world}-{len(results)}.pt", world, overrides)
    for name in ("micro-batches", "2 ranks", "2 ranks ZeRO-3"):
        for k, v in whole.items():
            assert torch.allclose(results[name][k], v, atol=2e-6, rtol=1e-4), (name, k)
    # Two mini-batches take two smaller optimizer steps per batch: a different trajectory,
    # but it must run (π_prox path) and move the parameters.
    diff = max(float((results["2 mini-batches"][k] - whole[k]).abs().max()) for k in whole)
    assert diff > 0


def test_dpo_layouts_agree(tiny_model, tmp_path):
    # Online DPO's loss couples the two rows of a pair: micro-batches and ranks get whole
    # pairs, so every split gives the whole batch's parameters (4 pairs of fixed_batch's rows).
    from transformers import AutoModelForCausalLM

    initial = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    dpo = ["objective.name=dpo", "objective.dpo_beta=0.5"]
    whole = train(tiny_model, tmp_path / "whole.pt", 1, [*dpo, "train.micro_batch_size=8"])
    moved = max(float((whole[k] - initial[k]).abs().max()) for k in whole)
    assert moved > 1e-4, "SGD did not change the parameters: the comparison would be vacuous"
    # 2 ranks x 2 micro-batches: one pair per micro-batch. ZeRO-3 also checks that the
    # reference is loaded whole on every rank.
    layouts = {
        "2 ranks": (2, ["train.micro_batch_size=2"]),
        "2 ranks ZeRO-3": (2, ["train.micro_batch_size=4", "train.zero_stage=3"]),
    }
    for i, (name, (world, overrides)) in enumerate(layouts.items()):
        got = train(tiny_model, tmp_path / f"dpo-{i}.pt", world, [*dpo, *overrides])
        for k, v in whole.items():
            assert torch.allclose(got[k], v, atol=2e-6, rtol=1e-4), (name, k)

"""The critic is exact across layouts like the policy: the same batch scored and trained
whole, in micro-batches and on 2 gloo ranks with ZeRO-3 gives the same advantages, value
statistics and critic parameters (critic_dist_worker.py does the steps)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from tests.integration.test_distributed import train

WORKER = Path(__file__).with_name("critic_dist_worker.py")


def test_critic_layouts_agree(tiny_causal_lm, tmp_path):
    layouts = {
        "whole": (1, ["train.micro_batch_size=8"]),
        "micro-batches": (1, ["train.micro_batch_size=3"]),
        "2 ranks ZeRO-3": (2, ["train.micro_batch_size=4", "train.zero_stage=3"]),
    }
    out = {
        name: train(tiny_causal_lm, tmp_path / f"{i}.pt", world, overrides, worker=WORKER)
        for i, (name, (world, overrides)) in enumerate(layouts.items())
    }
    whole = out["whole"]
    first, second = whole["stats"]
    # Not vacuous: the critic moved (the second step's values differ), the clip bit, and the
    # advantages are per token (they vary within a sample).
    assert first["value_mean"] != second["value_mean"]
    assert abs(first["kl_reward"]) > 1e-3
    assert max(s["value_clip_fraction"] for s in whole["stats"]) > 0
    adv = whole["advantages"][0]
    assert adv.dim() == 2 and float((adv[:, 1:] - adv[:, :-1]).abs().max()) > 1e-3
    for name in ("micro-batches", "2 ranks ZeRO-3"):
        got = out[name]
        for k, v in whole["params"].items():
            assert torch.allclose(got["params"][k], v, atol=2e-6, rtol=1e-4), (name, k)
        for a, b in zip(got["advantages"], whole["advantages"]):
            assert torch.allclose(a, b, atol=2e-6), name
        for s, t in zip(got["stats"], whole["stats"]):
            for key in ("value_mean", "value_explained_variance", "value_loss", "kl_reward"):
                assert math.isclose(s[key], t[key], rel_tol=1e-4, abs_tol=1e-6), (name, key)

"""Objectives carry the loop settings they need (learner/loop_defaults.py): applied only when
the user set no loop setting, and a warning when the user's makes an objective degenerate."""

from __future__ import annotations

import torch

from asyncrl.launch.config import load_config
from asyncrl.learner.loop_defaults import loop_warnings
from asyncrl.learner.loss_config import ObjectiveConfig
from asyncrl.learner.objectives import policy_loss


def _loop(*overrides: str) -> tuple[int, int, list[str]]:
    cfg = load_config(None, list(overrides))
    return cfg.train.mini_batches, cfg.train.ppo_epochs, loop_warnings(cfg.objective, cfg.train)


def test_decoupled_ppo_gets_four_mini_batches_unless_the_user_set_the_loop():
    # Untouched loop: AReaL's 4 mini-batches, no warning.
    assert _loop("objective.name=decoupled_ppo") == (4, 1, [])
    # The user's explicit 1 wins, and earns the warning (one line).
    mb, epochs, warn = _loop("objective.name=decoupled_ppo", "train.mini_batches=1")
    assert (mb, epochs) == (1, 1) and len(warn) == 1 and "\n" not in warn[0]
    assert "train.mini_batches" in warn[0]
    # Several epochs also give π_prox ≠ π_θ: no default added, no warning.
    assert _loop("objective.name=decoupled_ppo", "train.ppo_epochs=2") == (1, 2, [])
    # A batch of 1 group x 2 samples cannot be split into 4: 2 mini-batches.
    assert _loop(
        "objective.name=decoupled_ppo", "train.groups_per_step=1", "sampling.group_size=2"
    )[:2] == (2, 1)
    # ppo is meaningful with one step per batch: nothing changes.
    assert _loop("objective.name=ppo") == (1, 1, [])


def test_the_resolved_config_keeps_the_default_when_dumped_and_loaded(tmp_path):
    from asyncrl.launch.config import dump_config

    cfg = load_config(None, ["objective.name=decoupled_ppo"])
    path = tmp_path / "run.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(str(path)).train.mini_batches == 4


def test_clip_fraction_is_zero_with_one_step_and_not_after_the_policy_moved():
    # One token, A = 1, μ = log 0.5. One step per batch: π_prox = sg(π_θ) -> u = 1, never
    # clipped. After an earlier mini-batch moved π_θ to 0.8 while π_prox stayed 0.5:
    # u = 0.8 / 0.5 = 1.6 > 1 + 0.28 -> the token is clipped (clip_frac_high = 1), and the
    # behaviour weight w = π_prox / μ = 1 either way.
    cfg = ObjectiveConfig(name="decoupled_ppo")
    mu = torch.log(torch.tensor([[0.5]]))
    mask, adv = torch.ones(1, 1), torch.ones(1)
    lp = torch.log(torch.tensor([[0.5]])).requires_grad_()
    _, one = policy_loss(lp, mu, adv, mask, cfg)
    assert one["clip_frac_high"] == 0.0
    moved = torch.log(torch.tensor([[0.8]])).requires_grad_()
    _, later = policy_loss(moved, mu, adv, mask, cfg, prox_logprobs=mu.clone())
    assert later["clip_frac_high"] == 1.0 and later["is_weight_mean"] == 1.0

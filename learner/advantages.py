"""Advantage estimators: pure functions from group rewards to per-sample advantages.

Outcome rewards give one scalar per sample, so every estimator here maps `rewards [N, G]`
(N prompts, G samples each) to `advantages [N, G]`; the learner broadcasts a sample's
advantage to all of its response tokens. `reinforce_pp` whitens over tokens by default, so it
also takes each sample's response length. `compute_gae` is the token-level estimator for a
value model (PPO with a critic, `learner.critic`): for `gae`, `compute_advantages` returns
zeros that the critic replaces with per-token advantages once it has scored the batch. No
distributed imports: the learner passes the whole global batch, so batch-level statistics
(reinforce_pp) are global.
"""

from __future__ import annotations

import torch

from asyncrl.learner.loss_config import AdvantageConfig


def compute_advantages(
    rewards: torch.Tensor,
    cfg: AdvantageConfig,
    baseline_rewards: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Advantages for outcome rewards.

    rewards: [N, G] float; baseline_rewards: [N] (remax only: the greedy sample's reward);
    lengths: [N, G] response tokens per sample (reinforce_pp with whiten=token only).
    Returns (advantages [N, G] fp32, metrics). Finite for G = 1 and for all-equal rewards:
    a group with no spread gets advantage 0, never 0/0.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [N, G], got shape {tuple(rewards.shape)}")
    r = rewards.float()
    n, g = r.shape
    if r.numel() == 0:
        return r.clone(), {"mean": 0.0, "std": 0.0, "abs_max": 0.0, "zero_std_groups": 0.0}
    mean = r.mean(dim=1, keepdim=True)
    # Unbiased group std, as GRPO implementations use; G = 1 has none, so it counts as 0.
    std = r.std(dim=1, keepdim=True) if g > 1 else torch.zeros_like(mean)
    zero_std = (std.squeeze(1) <= cfg.eps).float()
    if cfg.name == "grpo":
        adv = (r - mean) / (std + cfg.eps)
    elif cfg.name == "dr_grpo":
        adv = r - mean
    elif cfg.name == "rloo":
        # r_i - (Σ_j r_j - r_i)/(G-1) = G/(G-1)·(r_i - mean); with G = 1 there is no other sample.
        adv = (r - mean) * (g / (g - 1)) if g > 1 else torch.zeros_like(r)
    elif cfg.name == "reinforce_pp":
        centred = r - mean if cfg.reinforce_pp_group_baseline else r
        if cfg.whiten == "token":
            adv = _token_whiten(centred, lengths, cfg.eps)
        else:
            flat = centred.reshape(-1)
            spread = flat.std() if flat.numel() > 1 else flat.new_zeros(())
            adv = (centred - flat.mean()) / (spread + cfg.eps)
    elif cfg.name == "remax":
        if baseline_rewards is None:
            raise ValueError(
                "advantage.name is 'remax' but the groups carry no greedy baseline; generators "
                "add one when the learner's advantage is remax (check they run this version)"
            )
        adv = r - baseline_rewards.float().reshape(n, 1)
    elif cfg.name == "gae":
        adv = torch.zeros_like(r)
    else:  # pragma: no cover - pydantic rejects other names
        raise ValueError(f"unknown advantage {cfg.name!r}")
    metrics = {
        "mean": float(adv.mean()),
        "std": float(adv.std()) if adv.numel() > 1 else 0.0,
        "abs_max": float(adv.abs().max()),
        "zero_std_groups": float(zero_std.mean()),
    }
    return adv, metrics


def _token_whiten(values: torch.Tensor, lengths: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Whitening over every response token of the batch, each sample's value repeated on its
    `l` tokens (REINFORCE++ as OpenRLHF and verl compute it): mean Σ l·v / Σ l and unbiased
    variance Σ l·(v − mean)² / (Σ l − 1) as verl's `masked_whiten` (OpenRLHF divides by Σ l:
    a factor √(Σ l / (Σ l − 1)) apart, negligible at a batch's token count). A sample with no
    tokens gets 0: nothing carries its advantage, and its value may lie off a zero spread."""
    if lengths is None:
        raise ValueError(
            "advantage.whiten is 'token' but no response lengths were given; pass lengths, "
            "or use advantage.whiten=sample"
        )
    w = lengths.to(values.dtype).reshape(values.shape)
    total = float(w.sum())
    if total <= 0:
        return torch.zeros_like(values)
    mean = (w * values).sum() / total
    var = (w * (values - mean) ** 2).sum() / (total - 1) if total > 1 else values.new_zeros(())
    adv = (values - mean) / (var.sqrt() + eps)
    return torch.where(w > 0, adv, torch.zeros_like(adv))


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float | torch.Tensor = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens.

    `lam` is one number or one per row ([N]: VAPO's length-adaptive λ).
    rewards, values, mask: [N, T] (mask 1 on response tokens, which must be contiguous from
    the first response position). The value after the last valid token is 0 (episode ends).
    Returns (advantages [N, T], returns [N, T]), both 0 where mask is 0.
    δ_t = r_t + γ·V_{t+1} − V_t;  A_t = δ_t + γ·λ·A_{t+1}.
    """
    rewards, values, mask = rewards.float(), values.float(), mask.float()
    n, t = rewards.shape
    if isinstance(lam, torch.Tensor):
        lam = lam.float().to(rewards.device).reshape(n)
    adv = torch.zeros_like(rewards)
    next_value = torch.zeros(n, dtype=rewards.dtype, device=rewards.device)
    next_adv = torch.zeros_like(next_value)
    for i in reversed(range(t)):
        m = mask[:, i]
        delta = rewards[:, i] + gamma * next_value - values[:, i]
        a = delta + gamma * lam * next_adv
        adv[:, i] = a * m
        # Padding after the end must not leak into the last valid token.
        next_value = values[:, i] * m
        next_adv = a * m
    returns = (adv + values) * mask
    return adv, returns

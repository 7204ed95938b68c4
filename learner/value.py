"""Pure tensor functions of PPO with a learned critic and of VAPO: token rewards, the
policy's λ (fixed or length-adaptive), the clipped value loss, explained variance, token
whitening and the positive-example LM loss. Nothing here knows about engines or ranks.

Shapes: everything per token is `[N, T]` in the shifted frame of the policy's logprobs
(position t scores token t+1 of the input), `mask` 1 on response tokens; per sample `[N]`.
"""

from __future__ import annotations

from typing import Literal

import torch


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last masked position ([N] long; 0 for an all-masked row)."""
    t = mask.shape[1]
    pos = torch.arange(t, device=mask.device).expand_as(mask)
    return torch.where(mask > 0, pos, torch.zeros_like(pos)).max(dim=1).values


def token_rewards(
    outcome: torch.Tensor,
    mask: torch.Tensor,
    kl: torch.Tensor | None = None,
    beta: float = 0.0,
) -> torch.Tensor:
    """Per-token rewards: the sample's outcome reward on its last response token, plus
    `-beta·kl` on every response token when `kl` (per-token log μ - log π_ref) is given
    (InstructGPT's KL-in-reward). Rows without response tokens get nothing."""
    mask = mask.float()
    rewards = torch.zeros_like(mask)
    has = mask.sum(1) > 0
    last = last_token_index(mask)
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows[has], last[has]] = outcome.float()[has]
    if kl is not None and beta > 0:
        rewards = rewards - beta * kl.float() * mask
    return rewards


def actor_lambda(
    mask: torch.Tensor, lam: float | Literal["adaptive"], alpha: float
) -> float | torch.Tensor:
    """λ of the policy's GAE: the number itself, or VAPO's length-adaptive
    λ_i = 1 - 1/(α·l_i) per sample of l_i response tokens, clamped to [0, 1] (short samples
    would get a negative λ)."""
    if lam != "adaptive":
        return float(lam)
    length = mask.float().sum(1).clamp(min=1.0)
    return (1.0 - 1.0 / (alpha * length)).clamp(0.0, 1.0)


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float,
    normalizer: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss ½·Σ max((V - R)², (V_clip - R)²) / normalizer with
    V_clip = V_old + clip(V - V_old, -clip, clip) (PPO2 / OpenAI baselines); `clip` 0 gives
    the plain squared error. Returns (loss, {"clipped": tokens whose clipped term was the
    larger, "tokens": valid tokens}) as sums, for the caller to weigh across micro-batches."""
    mask = mask.to(values.dtype)
    old, ret = old_values.to(values.dtype), returns.to(values.dtype)
    unclipped = (values - ret) ** 2
    if clip > 0:
        v_clip = old + torch.clamp(values - old, -clip, clip)
        clipped = (v_clip - ret) ** 2
        per_token = torch.maximum(unclipped, clipped)
        n_clipped = float(((clipped > unclipped).to(mask.dtype) * mask).sum())
    else:
        per_token, n_clipped = unclipped, 0.0
    loss = 0.5 * (per_token * mask).sum() / max(float(normalizer), 1.0)
    return loss, {"clipped": n_clipped, "tokens": float(mask.sum())}


def masked_moments(x: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """Token-weighted mean and population std of `x` over `mask`."""
    mask = mask.float()
    n = float(mask.sum())
    if n == 0:
        return 0.0, 0.0
    mean = float((x.float() * mask).sum() / n)
    var = float((((x.float() - mean) ** 2) * mask).sum() / n)
    return mean, var**0.5


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over the masked tokens: 1 = values predict returns exactly,
    0 = no better than their mean, negative = worse. NaN when the returns do not vary."""
    _, std_r = masked_moments(returns, mask)
    if std_r == 0.0:
        return float("nan")
    _, std_d = masked_moments(returns.float() - values.float(), mask)
    return 1.0 - (std_d**2) / (std_r**2)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / (std + eps) with token-weighted moments over `mask`; 0 outside it."""
    mean, std = masked_moments(x, mask)
    return (x.float() - mean) / (std + eps) * mask.float()


def positive_lm_loss(
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    threshold: float,
    normalizer: float,
) -> torch.Tensor:
    """VAPO's positive-example LM loss: -Σ log π over the tokens of samples whose reward is
    above `threshold`, / `normalizer` (the step's count of such tokens, so the split into
    micro-batches and ranks does not change it). 0 with a graph when none is positive."""
    positive = (rewards.to(logprobs.device) > threshold).to(logprobs.dtype)[:, None]
    keep = mask.to(logprobs.dtype) * positive
    return -(logprobs * keep).sum() / max(float(normalizer), 1.0)


def positive_tokens(mask: torch.Tensor, rewards: torch.Tensor, threshold: float) -> float:
    """How many tokens `positive_lm_loss` averages over in a (mini-)batch."""
    return float((mask.float() * (rewards.float() > threshold).float()[:, None]).sum())

"""Policy-gradient objectives for off-policy LLM RL, as pure tensor functions.

Notation per response token (DESIGN.md, "Objectives"): `μ` behaviour logprob from the
generator, `π_prox` the learner's logprob at the start of the step (no grad), `π_θ` the
current logprob (grad). `r = exp(π_θ − μ)`, `u = exp(π_θ − π_prox)`, `w = exp(π_prox − μ)`.
Every function maps tensors to `(loss, metrics)`; nothing here knows about ranks or
micro-batches: the caller passes `normalizer` (global token or sequence count) so that the
summed gradients of any split equal the gradient of the whole batch.

Shapes: logprobs, behaviour_logprobs, prox_logprobs, ref_logprobs, entropy, mask: [N, T];
advantages: [N] (one per sequence, broadcast over tokens) or [N, T].
"""

from __future__ import annotations

import torch

from asyncrl.learner.loss_config import ObjectiveConfig


def policy_loss(
    logprobs: torch.Tensor,
    behaviour_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: ObjectiveConfig,
    *,
    prox_logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The configured objective, aggregated, plus KL and entropy terms.

    `prox_logprobs` defaults to `logprobs.detach()` (one optimizer step per batch, where
    π_prox = π_θ at the step's start). `normalizer` is the global number of valid tokens
    (token-mean) or sequences (seq-mean modes) of the whole step; default: this call's own.
    Returns a scalar loss (finite for any input, 0 with a graph for all-masked input) and
    float metrics: loss, clip_frac_low, clip_frac_high, clip_frac_dual, ratio_mean,
    is_weight_mean, is_weight_max, masked_frac, kl, entropy.
    """
    mask = mask.to(logprobs.dtype)
    adv = advantages.to(logprobs.dtype)
    if adv.dim() == 1:
        adv = adv[:, None].expand_as(logprobs)
    clamp = cfg.log_ratio_clamp
    mu = behaviour_logprobs.to(logprobs.dtype)
    prox = logprobs.detach() if prox_logprobs is None else prox_logprobs.to(logprobs.dtype)
    log_r = torch.clamp(logprobs - mu, -clamp, clamp) * mask
    r = torch.exp(log_r)
    log_w = _level(torch.clamp(prox - mu, -clamp, clamp) * mask, mask, cfg.is_level, clamp)
    w = torch.exp(log_w)

    keep = mask
    if cfg.correction_mask:
        keep = keep * ((w >= cfg.is_floor) & (w <= cfg.is_cap)).to(mask.dtype)

    fn = _OBJECTIVES[cfg.name]
    per_token, stats, weight = fn(logprobs, mu, prox, log_r, r, w, adv, keep, cfg)
    keep = stats.pop("_keep", keep)

    pg = aggregate(per_token, keep, mask, cfg, normalizer)
    loss = pg
    kl_value = 0.0
    if ref_logprobs is not None and cfg.kl_beta > 0:
        kl_tok = kl_penalty(logprobs, ref_logprobs.to(logprobs.dtype), cfg.kl_estimator, clamp)
        loss = loss + cfg.kl_beta * aggregate(kl_tok, mask, mask, cfg, normalizer)
        kl_value = _masked_mean(kl_tok.detach(), mask)
    ent_value = 0.0
    if entropy is not None:
        ent_value = _masked_mean(entropy.detach(), mask)
        if cfg.entropy_coef > 0:
            loss = loss - cfg.entropy_coef * aggregate(entropy, mask, mask, cfg, normalizer)

    valid = float(mask.sum())
    metrics = {
        "loss": float(loss.detach()),
        "clip_frac_low": _frac(stats.get("low"), mask),
        "clip_frac_high": _frac(stats.get("high"), mask),
        "clip_frac_dual": _frac(stats.get("dual"), mask),
        "ratio_mean": _masked_mean(r.detach(), mask),
        "is_weight_mean": _masked_mean(weight.detach(), mask),
        "is_weight_max": float((weight.detach() * mask).max()) if valid else 0.0,
        "masked_frac": (1.0 - float(keep.sum()) / valid) if valid else 0.0,
        "kl": kl_value,
        "entropy": ent_value,
    }
    return loss, metrics


# --------------------------------------------------------------------------- objectives
# Each returns (per-token loss [N, T], clip indicators, behaviour weight for metrics).


def _ppo_terms(ratio, adv, eps_low, eps_high):
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    loss = -torch.minimum(ratio * adv, clipped * adv)
    stats = {
        "low": (ratio < 1.0 - eps_low) & (adv < 0),
        "high": (ratio > 1.0 + eps_high) & (adv > 0),
    }
    return loss, stats


def _ppo(logprobs, mu, prox, log_r, r, w, adv, keep, cfg):
    loss, stats = _ppo_terms(r, adv, cfg.eps_low, cfg.eps_high)
    return loss, stats, r


def _dual_clip(logprobs, mu, prox, log_r, r, w, adv, keep, cfg):
    loss, stats = _ppo_terms(r, adv, cfg.eps_low, cfg.eps_high)
    # For A < 0 the PPO loss -A·r grows without bound in r; cap it at -c·A (Ye et al. 2020).
    bound = -cfg.dual_clip_c * adv
    neg = adv < 0
    stats["dual"] = neg & (loss > bound)
    loss = torch.where(neg, torch.minimum(loss, bound), loss)
    return loss, stats, r


def _decoupled_ppo(logprobs, mu, prox, log_r, r, w, adv, keep, cfg):
    u = torch.exp(torch.clamp(logprobs - prox, -cfg.log_ratio_clamp, cfg.log_ratio_clamp))
    loss, stats = _ppo_terms(u, adv, cfg.eps_low, cfg.eps_high)
    weight, keep = _truncate(w, keep, cfg)
    stats["_keep"] = keep
    return weight.detach() * loss, stats, weight


def _cispo(logprobs, mu, prox, log_r, r, w, adv, keep, cfg):
    clipped = torch.clamp(r, 1.0 - cfg.eps_low, 1.0 + cfg.eps_high).detach()
    stats = {"low": r < 1.0 - cfg.eps_low, "high": r > 1.0 + cfg.eps_high}
    return -clipped * adv * logprobs, stats, clipped


def _gspo(logprobs, mu, prox, log_r, r, w, adv, keep, cfg):
    s = torch.exp(_seq_mean(log_r, keep))[:, None].expand_as(logprobs)
    loss, stats = _ppo_terms(s, adv, cfg.gspo_eps_low, cfg.gspo_eps_high)
    return loss, stats, s


def _gspo_token(logprobs, mu, prox, log_r, r, w, adv, keep, cfg):
    # s_t = sg(s)·π_θ(y_t)/sg(π_θ(y_t)): value of the sequence ratio, per-token gradient.
    s = torch.exp(_seq_mean(log_r, keep)).detach()[:, None] * torch.exp(
        logprobs - logprobs.detach()
    )
    loss, stats = _ppo_terms(s, adv, cfg.gspo_eps_low, cfg.gspo_eps_high)
    return loss, stats, s


def _aspo(logprobs, mu, prox, log_r, r, w, adv, keep, cfg):
    c = cfg.dual_clip_c
    # A < 0: PPO lower clip; where the ratio exceeds c, a soft dual clip keeps the gradient
    # (weight c on log π) instead of zeroing it.
    p_neg = torch.clamp(r, min=1.0 - cfg.eps_low)
    dual_neg = p_neg > c
    loss_neg = torch.where(dual_neg, -adv * c * logprobs, -adv * p_neg)
    # A > 0: flipped weight. p/sg(p)/sg(p) has value 1 and gradient ∇p/p² = (1/r)·∇log π while
    # unclipped, so low-probability tokens get larger updates; 1/p above c is softly capped.
    p_pos = torch.clamp(r, max=1.0 + cfg.eps_high)
    flipped = 1.0 / p_pos.detach()
    dual_pos = flipped > c
    loss_pos = torch.where(dual_pos, -adv * c * logprobs, -adv * (p_pos / p_pos.detach()) * flipped)
    neg = adv < 0
    loss = torch.where(neg, loss_neg, loss_pos)
    stats = {
        "low": neg & (r < 1.0 - cfg.eps_low),
        "high": ~neg & (r > 1.0 + cfg.eps_high),
        "dual": (neg & dual_neg) | (~neg & dual_pos),
    }
    weight = torch.where(neg, torch.clamp(p_neg, max=c), torch.clamp(flipped, max=c))
    return loss, stats, weight


def _reinforce_tis(logprobs, mu, prox, log_r, r, w, adv, keep, cfg):
    rho = torch.exp(_level(log_r.detach(), keep, cfg.is_level, cfg.log_ratio_clamp))
    weight, keep = _truncate(rho, keep, cfg)
    stats = {"_keep": keep, "high": rho > cfg.is_cap}
    return -weight.detach() * adv * logprobs, stats, weight


_OBJECTIVES = {
    "ppo": _ppo,
    "dual_clip": _dual_clip,
    "decoupled_ppo": _decoupled_ppo,
    "cispo": _cispo,
    "gspo": _gspo,
    "gspo_token": _gspo_token,
    "aspo": _aspo,
    "reinforce_tis": _reinforce_tis,
}


# --------------------------------------------------------------------------- pieces


def aggregate(
    per_token: torch.Tensor,
    keep: torch.Tensor,
    mask: torch.Tensor,
    cfg: ObjectiveConfig,
    normalizer: float | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss to a scalar. `keep` selects contributing tokens; `mask` (all
    valid tokens) defines sequence lengths, so dropping tokens never re-weights the rest.

    token-mean: Σ l·keep / normalizer (default Σ mask). seq-mean-token-mean: Σ_i (Σ_t l·keep /
    Σ_t mask) / normalizer (default N). seq-mean-token-sum-norm: Σ_i Σ_t l·keep / L /
    normalizer, L = cfg.norm_length or T.
    """
    per_token = torch.where(keep > 0, per_token, torch.zeros_like(per_token))
    if cfg.agg == "token-mean":
        denom = float(mask.sum()) if normalizer is None else normalizer
        return per_token.sum() / max(denom, 1.0)
    denom = float(mask.shape[0]) if normalizer is None else normalizer
    if cfg.agg == "seq-mean-token-mean":
        per_seq = per_token.sum(-1) / mask.sum(-1).clamp(min=1.0)
    else:
        per_seq = per_token.sum(-1) / float(cfg.norm_length or mask.shape[-1])
    return per_seq.sum() / max(denom, 1.0)


def kl_penalty(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str, clamp: float = 20.0
) -> torch.Tensor:
    """Per-token estimate of KL(π_θ ‖ π_ref) from samples of π (Schulman's k1/k2/k3)."""
    d = torch.clamp(ref_logprobs - logprobs, -clamp, clamp)  # log π_ref/π
    if estimator == "k1":
        return -d
    k2 = 0.5 * d * d
    if estimator == "k2":
        return k2
    k3 = torch.exp(d) - d - 1.0
    if estimator == "k3":
        return k3
    if estimator == "k3+":
        return k3.detach() + k2 - k2.detach()
    raise ValueError(f"unknown KL estimator {estimator!r}")


def _truncate(weight: torch.Tensor, keep: torch.Tensor, cfg: ObjectiveConfig):
    if cfg.is_mode == "truncate":
        return torch.clamp(weight, max=cfg.is_cap), keep
    return weight, keep * (weight <= cfg.is_cap).to(keep.dtype)


def _level(log_w: torch.Tensor, mask: torch.Tensor, level: str, clamp: float) -> torch.Tensor:
    """Token-level log-weights, or each sequence's summed log-weight on all its tokens."""
    if level == "token":
        return log_w
    total = torch.clamp((log_w * mask).sum(-1, keepdim=True), -clamp, clamp)
    return total.expand_as(log_w) * (mask > 0)


def _seq_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    n = float(mask.sum())
    return float((x * mask).sum()) / n if n else 0.0


def _frac(flags: torch.Tensor | None, mask: torch.Tensor) -> float:
    if flags is None:
        return 0.0
    return _masked_mean(flags.to(mask.dtype), mask)

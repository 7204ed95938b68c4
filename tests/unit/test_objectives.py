"""Objectives: hand-derived values and gradients for one token at a time, aggregation,
split invariance, KL estimators, and numerical safety."""

from __future__ import annotations

import math

import pytest
import torch

from asyncrl.learner.loss_config import ObjectiveConfig
from asyncrl.learner.objectives import aggregate, kl_penalty, policy_loss

LOG = math.log


def one_token(name, logp, mu, adv, prox=None, **kw):
    """Loss, d loss / d logπ and metrics for a single valid token."""
    cfg = ObjectiveConfig(name=name, **kw)
    lp = torch.tensor([[logp]], dtype=torch.float64, requires_grad=True)
    loss, m = policy_loss(
        lp,
        torch.tensor([[mu]], dtype=torch.float64),
        torch.tensor([adv], dtype=torch.float64),
        torch.ones(1, 1, dtype=torch.float64),
        cfg,
        prox_logprobs=None if prox is None else torch.tensor([[prox]], dtype=torch.float64),
    )
    loss.backward()
    return float(loss.detach()), float(lp.grad[0, 0]), m


# ---------------------------------------------------------------- ppo / dual clip


def test_ppo_positive_advantage_clipped_high():
    # r = 0.75/0.5 = 1.5 > 1 + 0.28, A = 1: loss = -min(1.5, 1.28) = -1.28, clipped branch
    # is constant so the gradient is 0; clip_frac_high counts it.
    loss, grad, m = one_token("ppo", LOG(0.75), LOG(0.5), 1.0)
    assert loss == pytest.approx(-1.28)
    assert grad == 0.0
    assert m["clip_frac_high"] == 1.0 and m["clip_frac_low"] == 0.0
    assert m["ratio_mean"] == pytest.approx(1.5)


def test_ppo_negative_advantage_unclipped_above():
    # r = 1.5, A = -1: -min(-1.5, -1.28) = 1.5; loss = -A·r so d/dlogπ = -A·r = 1.5.
    loss, grad, m = one_token("ppo", LOG(0.75), LOG(0.5), -1.0)
    assert loss == pytest.approx(1.5)
    assert grad == pytest.approx(1.5)
    assert m["clip_frac_high"] == 0.0


def test_ppo_low_side():
    # r = 0.25/0.5 = 0.5. A = -1: -min(-0.5, -0.8) = 0.8, clipped (grad 0, low clip).
    loss, grad, m = one_token("ppo", LOG(0.25), LOG(0.5), -1.0)
    assert (loss, grad, m["clip_frac_low"]) == (pytest.approx(0.8), 0.0, 1.0)
    # A = +1: -min(0.5, 0.8) = -0.5, unclipped: grad = -A·r = -0.5.
    loss, grad, m = one_token("ppo", LOG(0.25), LOG(0.5), 1.0)
    assert (loss, grad, m["clip_frac_low"]) == (pytest.approx(-0.5), pytest.approx(-0.5), 0.0)


def test_dual_clip_bounds_negative_advantage():
    # r = 5, A = -1: PPO gives -min(-5, -1.28) = 5; the dual bound -c·A = 3 wins, constant.
    loss, grad, m = one_token("dual_clip", LOG(5.0), 0.0, -1.0)
    assert (loss, grad, m["clip_frac_dual"]) == (pytest.approx(3.0), 0.0, 1.0)
    # r = 2 < c: plain PPO, 2 with grad 2.
    loss, grad, m = one_token("dual_clip", LOG(2.0), 0.0, -1.0)
    assert (loss, grad, m["clip_frac_dual"]) == (pytest.approx(2.0), pytest.approx(2.0), 0.0)
    # A > 0 is untouched: r = 5 clips high at -1.28.
    loss, _, m = one_token("dual_clip", LOG(5.0), 0.0, 1.0)
    assert loss == pytest.approx(-1.28) and m["clip_frac_dual"] == 0.0


def test_dual_clip_c_must_exceed_one():
    with pytest.raises(ValueError, match="dual_clip_c"):
        ObjectiveConfig(name="dual_clip", dual_clip_c=1.0)


# ---------------------------------------------------------------- decoupled, cispo, tis


def test_decoupled_ppo_weight_times_proximal_clip():
    # μ = -2, π_prox = μ + ln 0.5 (w = 0.5), π_θ = π_prox + ln 1.2 (u = 1.2), A = 1.
    # PPO on u: -min(1.2, clip(1.2)=1.2) = -1.2; times sg(w) = 0.5 -> -0.6; grad = -0.5·1.2.
    mu, prox = -2.0, -2.0 + LOG(0.5)
    loss, grad, m = one_token("decoupled_ppo", prox + LOG(1.2), mu, 1.0, prox=prox)
    assert loss == pytest.approx(-0.6)
    assert grad == pytest.approx(-0.6)
    assert m["is_weight_mean"] == pytest.approx(0.5)


def test_decoupled_ppo_truncate_and_mask():
    # w = 4 > C = 2: truncate -> weight 2, loss 2·(-1.2) = -2.4; mask -> token dropped.
    mu, prox = -3.0, -3.0 + LOG(4.0)
    loss, _, m = one_token("decoupled_ppo", prox + LOG(1.2), mu, 1.0, prox=prox)
    assert loss == pytest.approx(-2.4) and m["masked_frac"] == 0.0
    loss, grad, m = one_token("decoupled_ppo", prox + LOG(1.2), mu, 1.0, prox=prox, is_mode="mask")
    assert (loss, grad, m["masked_frac"]) == (0.0, 0.0, 1.0)


def test_cispo_keeps_gradient_of_clipped_tokens():
    # r = 1.5, A = 1: weight sg(clip(1.5, 0.8, 1.28)) = 1.28; loss = -1.28·log 0.75
    # = 1.28·0.287682 = 0.368233; d/dlogπ = -1.28 although the token is clipped.
    loss, grad, m = one_token("cispo", LOG(0.75), LOG(0.5), 1.0)
    assert loss == pytest.approx(-1.28 * LOG(0.75))
    assert grad == pytest.approx(-1.28)
    assert m["clip_frac_high"] == 1.0


def test_reinforce_tis_truncates_and_masks():
    # r = 3 > C = 2: loss -min(3, 2)·A·logπ with A = 1, grad -2; mask mode drops the token.
    loss, grad, _ = one_token("reinforce_tis", LOG(0.6), LOG(0.2), 1.0)
    assert loss == pytest.approx(-2.0 * LOG(0.6)) and grad == pytest.approx(-2.0)
    loss, grad, m = one_token("reinforce_tis", LOG(0.6), LOG(0.2), 1.0, is_mode="mask")
    assert (loss, grad, m["masked_frac"]) == (0.0, 0.0, 1.0)


def test_correction_mask_icepop_window():
    # ppo with w = r (single step) = 6 outside [0.5, 5]: masked; r = 1.1 inside: kept.
    _, _, m = one_token("ppo", LOG(6.0), 0.0, 1.0, correction_mask=True, is_floor=0.5, is_cap=5)
    assert m["masked_frac"] == 1.0
    _, _, m = one_token("ppo", LOG(1.1), 0.0, 1.0, correction_mask=True, is_floor=0.5, is_cap=5)
    assert m["masked_frac"] == 0.0


# ---------------------------------------------------------------- gspo, aspo


def two_token_seq(name, log_r, adv=1.0, **kw):
    cfg = ObjectiveConfig(name=name, **kw)
    lp = torch.tensor([[-1.0, -2.0]], dtype=torch.float64, requires_grad=True)
    mu = lp.detach() - torch.tensor([log_r], dtype=torch.float64)
    loss, m = policy_loss(lp, mu, torch.tensor([adv], dtype=torch.float64), torch.ones(1, 2), cfg)
    loss.backward()
    return float(loss.detach()), lp.grad[0].tolist(), m


@pytest.mark.parametrize("name", ["gspo", "gspo_token"])
def test_gspo_sequence_ratio(name):
    # log r = (0.1, -0.1): s = exp(mean) = 1 (inside the tiny clip). Each token's loss is -s·A,
    # token-mean over 2 tokens gives -1. ds/dlogπ_t = s/2, so each grad = -A·s/2 = -0.5.
    loss, grad, _ = two_token_seq(name, [0.1, -0.1])
    assert loss == pytest.approx(-1.0)
    assert grad == pytest.approx([-0.5, -0.5])


def test_gspo_clips_sequence_ratio():
    # log r = (0.2, 0): s = e^0.1 = 1.105 > 1 + 4e-4 with A = 1: loss -(1.0004), grad 0.
    loss, grad, m = two_token_seq("gspo", [0.2, 0.0])
    assert loss == pytest.approx(-1.0004)
    assert grad == [0.0, 0.0]
    assert m["clip_frac_high"] == 1.0


def test_aspo_flips_positive_weights():
    # A = 1, r = 0.5: p = 0.5, flipped 1/p = 2 < c: value -A·1·2 = -2; gradient of
    # p/sg(p)·(1/sg(p)) is (r/p)·(1/p) = 2, so d/dlogπ = -2 (PPO would give -0.5).
    loss, grad, _ = one_token("aspo", LOG(0.25), LOG(0.5), 1.0)
    assert loss == pytest.approx(-2.0) and grad == pytest.approx(-2.0)
    # r = 0.25: 1/p = 4 > c = 3: soft dual clip, loss -A·3·logπ, gradient -3 (kept, not 0).
    loss, grad, m = one_token("aspo", LOG(0.125), LOG(0.5), 1.0)
    assert loss == pytest.approx(-3.0 * LOG(0.125)) and grad == pytest.approx(-3.0)
    assert m["clip_frac_dual"] == 1.0


def test_aspo_negative_side():
    # A = -1, r = 4 > c: loss -A·c·logπ = 3·logπ, grad 3. r = 2: PPO-like -A·r = 2, grad 2.
    loss, grad, _ = one_token("aspo", LOG(0.8), LOG(0.2), -1.0)
    assert loss == pytest.approx(3.0 * LOG(0.8)) and grad == pytest.approx(3.0)
    loss, grad, _ = one_token("aspo", LOG(0.4), LOG(0.2), -1.0)
    assert loss == pytest.approx(2.0) and grad == pytest.approx(2.0)


# ---------------------------------------------------------------- aggregation


def test_aggregation_modes():
    # Sequence 1 has one token with loss 1; sequence 2 three tokens with losses 2, 3, 4.
    per = torch.tensor([[1.0, 0.0, 0.0], [2.0, 3.0, 4.0]])
    mask = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    # token-mean: (1+2+3+4)/4 = 2.5
    assert float(aggregate(per, mask, mask, ObjectiveConfig(agg="token-mean"))) == 2.5
    # seq-mean-token-mean: (1/1 + 9/3)/2 = 2
    cfg = ObjectiveConfig(agg="seq-mean-token-mean")
    assert float(aggregate(per, mask, mask, cfg)) == 2.0
    # seq-mean-token-sum-norm with L = 5: (1/5 + 9/5)/2 = 1
    cfg = ObjectiveConfig(agg="seq-mean-token-sum-norm", norm_length=5)
    assert float(aggregate(per, mask, mask, cfg)) == pytest.approx(1.0)
    # Without norm_length the padded width T = 3: (1/3 + 9/3)/2 = 5/3
    cfg = ObjectiveConfig(agg="seq-mean-token-sum-norm")
    assert float(aggregate(per, mask, mask, cfg)) == pytest.approx(5 / 3)


def random_batch(seed=0, n=6, t=7):
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(n, t, generator=g, dtype=torch.float64) * 3
    mu = lp - 0.3 * torch.randn(n, t, generator=g, dtype=torch.float64)
    adv = torch.randn(n, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    mask = (torch.arange(t)[None] < lengths[:, None]).double()
    return lp, mu, adv, mask


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("name", ["ppo", "cispo", "gspo", "aspo", "reinforce_tis"])
def test_split_invariance(name, agg):
    # Summing micro-batch losses (each normalised by the global count) reproduces the whole-
    # batch gradient: what data-parallel ranks and gradient accumulation rely on.
    lp, mu, adv, mask = random_batch()
    cfg = ObjectiveConfig(name=name, agg=agg)
    norm = float(mask.sum()) if agg == "token-mean" else float(len(lp))
    whole = lp.clone().requires_grad_(True)
    policy_loss(whole, mu, adv, mask, cfg, normalizer=norm)[0].backward()
    parts = lp.clone().requires_grad_(True)
    total = 0.0
    for sl in (slice(0, 1), slice(1, 4), slice(4, 6)):
        total = total + policy_loss(parts[sl], mu[sl], adv[sl], mask[sl], cfg, normalizer=norm)[0]
    total.backward()
    assert torch.allclose(whole.grad, parts.grad, atol=1e-12)


# ---------------------------------------------------------------- KL and entropy


def test_kl_estimators():
    # π = 0.5, π_ref = 0.25: d = log(π_ref/π) = -ln 2 = -0.693147.
    # k1 = -d = 0.693147; k2 = d²/2 = 0.240227; k3 = e^d - d - 1 = 0.5 + 0.693147 - 1.
    lp = torch.tensor([LOG(0.5)], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([LOG(0.25)], dtype=torch.float64)
    assert float(kl_penalty(lp, ref, "k1").detach()) == pytest.approx(LOG(2))
    assert float(kl_penalty(lp, ref, "k2").detach()) == pytest.approx(0.5 * LOG(2) ** 2)
    assert float(kl_penalty(lp, ref, "k3").detach()) == pytest.approx(0.5 + LOG(2) - 1)
    k3p = kl_penalty(lp, ref, "k3+")
    assert float(k3p.detach()) == pytest.approx(0.5 + LOG(2) - 1)
    # gradient of k2 = d²/2 w.r.t. logπ: d·(-1) = ln 2.
    k3p.backward()
    assert float(lp.grad) == pytest.approx(LOG(2))


def test_kl_and_entropy_enter_loss():
    # One token, A = 0 so the policy term is 0; β = 0.1 with k1 = ln 2 adds 0.0693147;
    # entropy 1.5 with coefficient 0.01 subtracts 0.015.
    cfg = ObjectiveConfig(kl_beta=0.1, kl_estimator="k1", entropy_coef=0.01)
    lp = torch.tensor([[LOG(0.5)]])
    loss, m = policy_loss(
        lp,
        lp,
        torch.zeros(1),
        torch.ones(1, 1),
        cfg,
        ref_logprobs=torch.tensor([[LOG(0.25)]]),
        entropy=torch.tensor([[1.5]]),
    )
    assert float(loss) == pytest.approx(0.1 * LOG(2) - 0.015, abs=1e-6)
    assert m["kl"] == pytest.approx(LOG(2), abs=1e-6) and m["entropy"] == 1.5


# ---------------------------------------------------------------- safety and gradcheck

NAMES = [
    "ppo",
    "dual_clip",
    "decoupled_ppo",
    "cispo",
    "gspo",
    "gspo_token",
    "aspo",
    "reinforce_tis",
]


@pytest.mark.parametrize("name", NAMES)
def test_extreme_ratios_stay_finite(name):
    # Ratios from 1e-6 to 1e6 on both advantage signs, plus an all-masked row.
    log_r = torch.log(torch.tensor([[1e-6, 1e-3, 1.0, 1e3, 1e6]], dtype=torch.float64))
    lp = (torch.full((3, 5), -2.0, dtype=torch.float64)).requires_grad_(True)
    mu = lp.detach() - log_r.expand(3, 5)
    adv = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    mask = torch.ones(3, 5, dtype=torch.float64)
    mask[2] = 0
    loss, m = policy_loss(lp, mu, adv, mask, ObjectiveConfig(name=name))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(lp.grad).all()
    assert all(math.isfinite(v) for v in m.values())


@pytest.mark.parametrize("name", NAMES)
def test_empty_and_all_masked(name):
    cfg = ObjectiveConfig(name=name)
    for n in (0, 2):
        lp = torch.zeros(n, 4, requires_grad=True)
        loss, m = policy_loss(lp, torch.zeros(n, 4), torch.ones(n), torch.zeros(n, 4), cfg)
        loss.backward()
        assert float(loss) == 0.0 and m["masked_frac"] == 0.0
        assert torch.isfinite(lp.grad).all()


@pytest.mark.parametrize("name", ["ppo", "dual_clip", "decoupled_ppo", "gspo"])
def test_gradcheck(name):
    # Objectives without stop-gradients: finite differences agree with autograd away from the
    # clip kinks (ratios near 1, wide clip range).
    lp0, mu, prox, adv, mask = smooth_batch()
    cfg = ObjectiveConfig(name=name, eps_low=0.5, eps_high=0.5, gspo_eps_low=0.5, gspo_eps_high=0.5)

    def f(lp):
        return policy_loss(lp, mu, adv, mask, cfg, prox_logprobs=prox)[0]

    assert torch.autograd.gradcheck(f, (lp0.clone().requires_grad_(True),))


def test_stop_gradient_objectives_have_the_intended_gradient():
    # cispo, reinforce_tis and aspo differentiate log π with a frozen weight, so their gradient
    # is not the derivative of their value: check it against the closed form instead.
    # token-mean over 11 valid tokens: d loss / d logπ_t = -weight_t · A_t / 11.
    lp0, mu, prox, adv, mask = smooth_batch()
    r = torch.exp(lp0 - mu)
    a = adv[:, None].expand_as(lp0)
    expected = {
        "cispo": torch.clamp(r, 0.8, 1.28),
        "reinforce_tis": torch.clamp(r, max=2.0),
        # aspo: 1/r for A > 0 (ratios here stay inside the clip and below c), r for A < 0.
        "aspo": torch.where(a > 0, 1.0 / r, r),
    }
    for name, weight in expected.items():
        lp = lp0.clone().requires_grad_(True)
        policy_loss(lp, mu, adv, mask, ObjectiveConfig(name=name))[0].backward()
        assert torch.allclose(lp.grad, -weight * a * mask / 11.0, atol=1e-12), name


def smooth_batch():
    torch.manual_seed(0)
    lp0 = -torch.rand(3, 4, dtype=torch.float64) - 0.5
    mu = lp0 + 0.05 * torch.randn(3, 4, dtype=torch.float64)
    prox = lp0 + 0.02 * torch.randn(3, 4, dtype=torch.float64)
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    mask = torch.ones(3, 4, dtype=torch.float64)
    mask[1, 3] = 0
    return lp0, mu, prox, adv, mask

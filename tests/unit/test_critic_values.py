"""PPO with a learned critic and VAPO: GAE on response tokens, decoupled λ, token rewards
(with KL-in-reward), clipped value loss, explained variance, the positive-example LM loss
and the config rules. Expected values derived by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from asyncrl.launch.config import ConfigError, load_config
from asyncrl.learner.advantages import compute_advantages, compute_gae
from asyncrl.learner.loss_config import AdvantageConfig
from asyncrl.learner.value import (
    actor_lambda,
    explained_variance,
    positive_lm_loss,
    positive_tokens,
    token_rewards,
    value_loss,
    whiten,
)


def test_gae_three_tokens_after_a_prompt():
    # Position 0 is the prompt, 1-3 the response, 4 padding. Rewards (0, 0, 1) on the
    # response, values (0.5, 0.6, 0.7), γ = 1, λ = 0.9; the value after the last token is 0.
    # δ3 = 1 + 0 - 0.7 = 0.3                       A3 = 0.3
    # δ2 = 0 + 0.7 - 0.6 = 0.1                     A2 = 0.1 + 0.9·0.3 = 0.37
    # δ1 = 0 + 0.6 - 0.5 = 0.1                     A1 = 0.1 + 0.9·0.37 = 0.433
    # returns = A + V = (0.933, 0.97, 1.0)
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]])
    rewards = token_rewards(torch.tensor([1.0]), mask)
    assert rewards.tolist() == [[0.0, 0.0, 0.0, 1.0, 0.0]]
    values = torch.tensor([[0.0, 0.5, 0.6, 0.7, 0.0]])
    adv, ret = compute_gae(rewards, values, mask, gamma=1.0, lam=0.9)
    assert adv[0].tolist() == pytest.approx([0.0, 0.433, 0.37, 0.3, 0.0], abs=1e-6)
    assert ret[0].tolist() == pytest.approx([0.0, 0.933, 0.97, 1.0, 0.0], abs=1e-6)
    # λ = 1 (VAPO's critic targets), γ = 1: every return is the outcome, 1 (Monte Carlo).
    _, mc = compute_gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert mc[0].tolist() == pytest.approx([0.0, 1.0, 1.0, 1.0, 0.0], abs=1e-6)
    # λ = 0: A_t = δ_t = (0.1, 0.1, 0.3).
    td, _ = compute_gae(rewards, values, mask, gamma=1.0, lam=0.0)
    assert td[0].tolist() == pytest.approx([0.0, 0.1, 0.1, 0.3, 0.0], abs=1e-6)


def test_decoupled_lambda_per_sample():
    # Lengths 2 and 8, α = 0.5: λ = 1 - 1/(0.5·2) = 0 and 1 - 1/(0.5·8) = 0.75.
    mask = torch.zeros(2, 8)
    mask[0, :2] = 1
    mask[1, :] = 1
    lam = actor_lambda(mask, "adaptive", 0.5)
    assert lam.tolist() == pytest.approx([0.0, 0.75])
    # VAPO's α = 0.05: l = 100 gives 1 - 1/5 = 0.8; l = 10 gives 1 - 2 = -1, clamped to 0.
    long = torch.zeros(2, 100)
    long[0, :] = 1
    long[1, :10] = 1
    assert actor_lambda(long, "adaptive", 0.05).tolist() == pytest.approx([0.8, 0.0])
    assert actor_lambda(mask, 0.95, 0.5) == 0.95
    # Per-row λ in GAE: row 0 (λ 0) gets δ, row 1 (λ 0.75) its own recursion. Row 1, two
    # tokens used: rewards (0, 1), values (0.5, 0.5): δ1 = 0.5, δ0 = 0; A0 = 0.75·0.5 = 0.375.
    rewards = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    values = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    ones = torch.ones(2, 2)
    adv, _ = compute_gae(rewards, values, ones, 1.0, torch.tensor([0.0, 0.75]))
    assert adv.flatten().tolist() == pytest.approx([0.0, 0.5, 0.375, 0.5])


def test_kl_in_reward():
    # Outcome 1 on the last response token (index 2); -β·kl with β = 0.5 on every response
    # token: kl (0.2, -0.1) -> (-0.1, +0.05); total (0, -0.1, 1.05, 0).
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    kl = torch.tensor([[5.0, 0.2, -0.1, 5.0]])
    r = token_rewards(torch.tensor([1.0]), mask, kl, beta=0.5)
    assert r[0].tolist() == pytest.approx([0.0, -0.1, 1.05, 0.0])
    # A row with no response token gets nothing (no index -1 wrap-around).
    empty = token_rewards(torch.tensor([1.0]), torch.zeros(1, 3))
    assert empty.tolist() == [[0.0, 0.0, 0.0]]


def test_clipped_value_loss_and_gradient():
    # clip 0.2, old (0.5, 0.5), new V (1.0, 0.0), returns (2.0, 0.45), normalizer 2.
    # token 0: (V-R)² = 1; V_clip = 0.5 + 0.2 = 0.7, (0.7-2)² = 1.69 -> max 1.69 (clipped).
    # token 1: (0-0.45)² = 0.2025; V_clip = 0.5 - 0.2 = 0.3, (0.3-0.45)² = 0.0225 -> 0.2025.
    # loss = ½·(1.69 + 0.2025)/2 = 0.473125. dL/dV: token 0 clipped -> 0;
    # token 1: ½·2·(0 - 0.45)/2 = -0.225.
    v = torch.tensor([[1.0, 0.0]], requires_grad=True)
    old = torch.tensor([[0.5, 0.5]])
    ret = torch.tensor([[2.0, 0.45]])
    mask = torch.ones(1, 2)
    loss, st = value_loss(v, old, ret, mask, clip=0.2, normalizer=2)
    assert float(loss.detach()) == pytest.approx(0.473125)
    assert st == {"clipped": 1.0, "tokens": 2.0}
    loss.backward()
    assert v.grad[0].tolist() == pytest.approx([0.0, -0.225])
    # Unclipped: ½·(1 + 0.2025)/2 = 0.300625.
    plain, st0 = value_loss(v.detach(), old, ret, mask, clip=0.0, normalizer=2)
    assert float(plain) == pytest.approx(0.300625)
    assert st0["clipped"] == 0.0


def test_explained_variance_and_whitening():
    # Returns (1, 0, 1, 0): Var = 0.25. Values (0.75, 0.25, ...): residual ±0.25, Var 0.0625,
    # so 1 - 0.0625/0.25 = 0.75. Exact values give 1; a constant gives 0. Padding is ignored.
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    ret = torch.tensor([[1.0, 0.0, 1.0, 0.0, 9.0]])
    v = torch.tensor([[0.75, 0.25, 0.75, 0.25, -9.0]])
    assert explained_variance(v, ret, mask) == pytest.approx(0.75)
    assert explained_variance(ret, ret, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(ret, 0.3), ret, mask) == pytest.approx(0.0)
    assert math.isnan(explained_variance(v, torch.ones_like(ret), mask))
    # Whitening over tokens: mean 0.5, std 0.5 -> (1, -1, 1, -1), 0 on padding.
    w = whiten(ret, mask, eps=0.0)
    assert w[0].tolist() == pytest.approx([1.0, -1.0, 1.0, -1.0, 0.0])


def test_positive_lm_loss():
    # Sample 0 (reward 1 > 0.5) is positive, sample 1 (0) is not; mask drops token (0, 2).
    # Positive tokens: 2 -> loss = -(-1 - 2)/2 = 1.5; gradient -1/2 on those two tokens.
    lp = torch.tensor([[-1.0, -2.0, -7.0], [-3.0, -4.0, -5.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    rewards = torch.tensor([1.0, 0.0])
    n = positive_tokens(mask, rewards, 0.5)
    assert n == 2.0
    loss = positive_lm_loss(lp, mask, rewards, 0.5, n)
    assert float(loss.detach()) == pytest.approx(1.5)
    loss.backward()
    assert lp.grad.tolist() == [[-0.5, -0.5, 0.0], [0.0, 0.0, 0.0]]


def test_gae_name_leaves_advantages_to_the_critic():
    adv, _ = compute_advantages(torch.tensor([[1.0, 0.0]]), AdvantageConfig(name="gae"))
    assert adv.tolist() == [[0.0, 0.0]]


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["advantage.name=gae", "advantage.lam_actor=1.5"], "lam_actor"),
        (["advantage.kl_in_reward=true"], "advantage.name=gae"),
        (["critic.init=path"], "critic.path"),
        (
            ["advantage.name=gae", "train.zero_stage=3", "critic.zero_stage=2"],
            "ZeRO-3 must be used by both",
        ),
        (["advantage.name=gae", "critic.pretrain_steps=5", "train.steps=5"], "no step"),
    ],
)
def test_config_refuses(overrides, words):
    with pytest.raises(ConfigError, match=words):
        load_config("tiny-cpu", overrides)


def test_critic_presets():
    vapo = load_config("vapo-tiny-cpu")
    assert vapo.advantage.name == "gae" and vapo.advantage.lam_actor == "adaptive"
    assert vapo.advantage.lam_critic == 1.0 and vapo.critic.pretrain_steps > 0
    assert vapo.objective.positive_lm_coef > 0
    real = load_config("vapo-single-gpu")
    assert real.advantage.alpha == 0.05 and real.critic.pretrain_steps == 50
    assert load_config("critic-tiny-cpu").advantage.name == "gae"


def test_value_model_from_the_policy_and_from_a_reward_model(tiny_causal_lm, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, Qwen2ForSequenceClassification

    from asyncrl.learner.critic import load_value_model

    # From the policy: its transformer, a fresh one-output head, no dropout on it.
    critic = load_value_model(tiny_causal_lm, torch.float32)
    policy = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    assert torch.equal(critic.model.embed_tokens.weight, policy.model.embed_tokens.weight)
    assert critic.score.out_features == 1 and critic.dropout.p == 0.0
    assert critic(input_ids=torch.tensor([[5, 6, 7]])).logits.shape == (1, 3, 1)
    # From a reward model (sequence classification, one label): backbone and head kept.
    cfg = AutoConfig.from_pretrained(tiny_causal_lm)
    cfg.num_labels = 1
    torch.manual_seed(3)
    rm = Qwen2ForSequenceClassification(cfg)
    rm.save_pretrained(tmp_path / "rm")
    from_rm = load_value_model(str(tmp_path / "rm"), torch.float32)
    assert torch.equal(from_rm.score.weight, rm.score.weight)
    q_rm = rm.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(from_rm.model.layers[0].self_attn.q_proj.weight, q_rm)
    assert not torch.equal(critic.model.layers[0].self_attn.q_proj.weight, q_rm)

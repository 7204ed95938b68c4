"""Advantage estimators and chunked logprobs, with hand-derived values."""

from __future__ import annotations

import math

import pytest
import torch

from asyncrl.learner.advantages import compute_advantages, compute_gae
from asyncrl.learner.logprobs import token_entropy, token_logprobs
from asyncrl.learner.loss_config import AdvantageConfig


def adv(name, rewards, **kw):
    out, _ = compute_advantages(torch.tensor(rewards), AdvantageConfig(name=name, **kw), **{})
    return out


def test_grpo():
    # [1,0,0,1]: mean 0.5, unbiased std sqrt(4·0.25/3) = 0.57735 -> ±0.5/0.57735 = ±0.866025.
    out = adv("grpo", [[1.0, 0.0, 0.0, 1.0]])
    assert out.tolist()[0] == pytest.approx([0.866025, -0.866025, -0.866025, 0.866025], abs=1e-5)


def test_dr_grpo_and_rloo():
    # dr_grpo: r - 0.5. rloo: r_1 - mean(0, 0, 1) = 1 - 1/3 = 2/3; r_2 = 0 - 2/3.
    assert adv("dr_grpo", [[1.0, 0.0, 0.0, 1.0]]).tolist()[0] == [0.5, -0.5, -0.5, 0.5]
    out = adv("rloo", [[1.0, 0.0, 0.0, 1.0]]).tolist()[0]
    assert out == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])


def test_reinforce_pp_whitens_over_batch():
    # whiten=sample. Flat [1,0,1,1]: mean 0.75, unbiased std sqrt((3·0.0625 + 0.5625)/3) = 0.5;
    # (1-0.75)/0.5 = 0.5 and (0-0.75)/0.5 = -1.5.
    out = adv("reinforce_pp", [[1.0, 0.0], [1.0, 1.0]], eps=1e-12, whiten="sample")
    assert out.flatten().tolist() == pytest.approx([0.5, -1.5, 0.5, 0.5])
    # With the group baseline: centred [[.5,-.5],[0,0]], flat mean 0, std sqrt(0.5/3).
    out = adv(
        "reinforce_pp",
        [[1.0, 0.0], [1.0, 1.0]],
        eps=1e-12,
        reinforce_pp_group_baseline=True,
        whiten="sample",
    )
    s = math.sqrt(0.5 / 3)
    assert out.flatten().tolist() == pytest.approx([0.5 / s, -0.5 / s, 0.0, 0.0])


def pp_token(rewards, lengths, **kw):
    cfg = AdvantageConfig(name="reinforce_pp", eps=1e-12, **kw)
    out, _ = compute_advantages(torch.tensor(rewards), cfg, lengths=torch.tensor(lengths))
    return out


def test_reinforce_pp_token_whitening_by_hand():
    # Rewards [1, 0] on 1 and 3 tokens: the batch's tokens carry [1, 0, 0, 0].
    # Token mean 1/4; unbiased variance (0.75² + 3·0.25²)/(4 − 1) = 0.75/3 = 0.25, std 0.5:
    # (1 − 0.25)/0.5 = 1.5 and (0 − 0.25)/0.5 = −0.5.
    assert pp_token([[1.0, 0.0]], [[1, 3]]).tolist()[0] == pytest.approx([1.5, -0.5])
    # With the group baseline the group's mean 0.5 comes off first: [0.5, −0.5] on tokens
    # [.5, −.5, −.5, −.5]: mean −0.25, variance (0.75² + 3·0.25²)/3 = 0.25: [1.5, −0.5] again.
    out = pp_token([[1.0, 0.0]], [[1, 3]], reinforce_pp_group_baseline=True)
    assert out.tolist()[0] == pytest.approx([1.5, -0.5])
    # A sample without tokens carries nothing: 0, and it does not move the others' statistics
    # (the tokens are [1, 0, 0, 0] as before).
    out = pp_token([[1.0, 0.0, 5.0]], [[1, 3, 0]])
    assert out.tolist()[0] == pytest.approx([1.5, -0.5, 0.0])


def test_reinforce_pp_token_and_sample_modes_differ_as_expected():
    # The case: the modes differ by the weight of long responses. Rewards [1, 0]:
    # sample mode sees [1, 0], mean 0.5, std sqrt(0.5) -> ±0.707107 whatever the lengths.
    sample = adv("reinforce_pp", [[1.0, 0.0]], eps=1e-12, whiten="sample")
    assert sample.tolist()[0] == pytest.approx([0.707107, -0.707107], abs=1e-6)
    # Token mode, the wrong answer three times longer: it pulls the mean to 0.25, so the right
    # answer gains (1.5 > 0.707) and the wrong one loses less per token (−0.5 > −0.707).
    token = pp_token([[1.0, 0.0]], [[1, 3]])
    assert token[0, 0] > sample[0, 0] and token[0, 1] > sample[0, 1]
    # Equal lengths: same mean, but the variance is over 2·2 tokens with Bessel's 4 − 1:
    # 2·(0.25 + 0.25)/3 = 1/3, std 0.57735 -> ±0.866025 (sample mode divides by 2 − 1).
    equal = pp_token([[1.0, 0.0]], [[2, 2]]).tolist()[0]
    assert equal == pytest.approx([0.866025, -0.866025], abs=1e-6)


def test_reinforce_pp_token_matches_the_expanded_token_definition():
    # Repeat each sample's value on its tokens and whiten that flat vector with torch's own
    # mean and unbiased std (what verl's masked_whiten computes on the [N, T] advantages).
    g = torch.Generator().manual_seed(3)
    rewards = torch.rand(4, 5, generator=g)
    lengths = torch.randint(1, 9, (4, 5), generator=g)
    for baseline in (False, True):
        cfg = AdvantageConfig(name="reinforce_pp", eps=1e-12, reinforce_pp_group_baseline=baseline)
        out, _ = compute_advantages(rewards, cfg, lengths=lengths)
        v = rewards - rewards.mean(1, keepdim=True) if baseline else rewards
        tokens = torch.repeat_interleave(v.reshape(-1), lengths.reshape(-1))
        want = (v - tokens.mean()) / tokens.std()
        assert torch.allclose(out, want, atol=1e-5)


def test_reinforce_pp_token_needs_lengths():
    with pytest.raises(ValueError, match="whiten"):
        compute_advantages(torch.tensor([[1.0, 0.0]]), AdvantageConfig(name="reinforce_pp"))


def test_remax_uses_greedy_baseline():
    cfg = AdvantageConfig(name="remax")
    out, _ = compute_advantages(torch.tensor([[1.0, 0.0]]), cfg, torch.tensor([1.0]))
    assert out.tolist() == [[0.0, -1.0]]
    with pytest.raises(ValueError, match="baseline"):
        compute_advantages(torch.tensor([[1.0, 0.0]]), cfg)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "reinforce_pp"])
def test_degenerate_groups_are_finite(name):
    for rewards in ([[1.0]], [[0.5, 0.5, 0.5]], [[0.0], [0.0]]):
        r = torch.tensor(rewards)
        lengths = torch.full(r.shape, 3)
        out, m = compute_advantages(r, AdvantageConfig(name=name), lengths=lengths)
        assert torch.isfinite(out).all()
        assert out.abs().max() == 0.0
        assert all(math.isfinite(v) for v in m.values())


def test_gae():
    # T = 2, rewards (0, 1), values (0.5, 0.5), γ = 1, λ = 0.5, third position padding.
    # δ_1 = 1 + 0 - 0.5 = 0.5 = A_1; δ_0 = 0 + 0.5 - 0.5 = 0, A_0 = 0 + 0.5·0.5 = 0.25.
    # returns = A + V = (0.75, 1.0).
    rewards = torch.tensor([[0.0, 1.0, 9.0]])
    values = torch.tensor([[0.5, 0.5, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    a, ret = compute_gae(rewards, values, mask, gamma=1.0, lam=0.5)
    assert a.tolist() == [[0.25, 0.5, 0.0]]
    assert ret.tolist() == [[0.75, 1.0, 0.0]]


# ---------------------------------------------------------------- chunked logprobs


@pytest.mark.parametrize("chunk", [None, 1, 3, 1000])
def test_token_logprobs_match_log_softmax(chunk):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 11, (2, 5), generator=g)
    got = token_logprobs(logits, tokens, temperature=0.7, chunk_size=chunk)
    want = torch.log_softmax(logits.float() / 0.7, -1).gather(-1, tokens[..., None])[..., 0]
    assert torch.allclose(got, want, atol=1e-5)
    got.sum().backward()
    g1 = logits.grad.clone()
    logits.grad = None
    want.sum().backward()
    assert torch.allclose(g1, logits.grad, atol=1e-5)


def test_token_entropy():
    # Uniform over V = 8: entropy ln 8 at any temperature; a one-hot-ish row has ~0.
    logits = torch.zeros(1, 2, 8)
    logits[0, 1, 3] = 100.0
    ent = token_entropy(logits, temperature=0.5, chunk_size=1)
    assert ent[0, 0] == pytest.approx(math.log(8), abs=1e-6)
    assert ent[0, 1] == pytest.approx(0.0, abs=1e-6)


def test_temperature_must_be_positive():
    with pytest.raises(ValueError):
        token_logprobs(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long), temperature=0)

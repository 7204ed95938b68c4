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
    # Flat [1,0,1,1]: mean 0.75, unbiased std sqrt((3·0.0625 + 0.5625)/3) = 0.5;
    # (1-0.75)/0.5 = 0.5 and (0-0.75)/0.5 = -1.5.
    out = adv("reinforce_pp", [[1.0, 0.0], [1.0, 1.0]], eps=1e-12)
    assert out.flatten().tolist() == pytest.approx([0.5, -1.5, 0.5, 0.5])
    # With the group baseline: centred [[.5,-.5],[0,0]], flat mean 0, std sqrt(0.5/3).
    out = adv("reinforce_pp", [[1.0, 0.0], [1.0, 1.0]], eps=1e-12, reinforce_pp_group_baseline=True)
    s = math.sqrt(0.5 / 3)
    assert out.flatten().tolist() == pytest.approx([0.5 / s, -0.5 / s, 0.0, 0.0])


def test_remax_uses_greedy_baseline():
    cfg = AdvantageConfig(name="remax")
    out, _ = compute_advantages(torch.tensor([[1.0, 0.0]]), cfg, torch.tensor([1.0]))
    assert out.tolist() == [[0.0, -1.0]]
    with pytest.raises(ValueError, match="baseline"):
        compute_advantages(torch.tensor([[1.0, 0.0]]), cfg)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "reinforce_pp"])
def test_degenerate_groups_are_finite(name):
    for rewards in ([[1.0]], [[0.5, 0.5, 0.5]], [[0.0], [0.0]]):
        out, m = compute_advantages(torch.tensor(rewards), AdvantageConfig(name=name))
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

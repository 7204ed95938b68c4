"""Online DPO: pairs from groups, the DPO and IPO losses and their gradients on hand-derived
examples, micro-batches of whole pairs, and the config rules."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from asyncrl.learner.dpo import dpo_loss, group_pairs, interleave
from asyncrl.learner.dpo_step import _pair_micro_batches, pair_batch, rows_per_step
from asyncrl.learner.engine import Batch
from asyncrl.learner.loss_config import ObjectiveConfig


def test_best_worst_and_all_pairs():
    # Group 0 rewards [1, 0, 1, 0.5]: best is the first 1 (index 0), worst index 1.
    # Group 1 is tied: no pair. Flat indices are n·G + g with G = 4.
    rewards = torch.tensor([[1.0, 0.0, 1.0, 0.5], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 2.0]])
    chosen, rejected = group_pairs(rewards, "best_worst")
    assert chosen.tolist() == [0, 11] and rejected.tolist() == [1, 8]
    # all: every (i, j) with r_i > r_j, by i then j: (0,1) (0,3) (2,1) (2,3) (3,1) in group 0,
    # (3,0) (3,1) (3,2) in group 2 (+8).
    chosen, rejected = group_pairs(rewards, "all")
    assert list(zip(chosen.tolist(), rejected.tolist())) == [
        (0, 1),
        (0, 3),
        (2, 1),
        (2, 3),
        (3, 1),
        (11, 8),
        (11, 9),
        (11, 10),
    ]
    assert interleave(torch.tensor([0, 11]), torch.tensor([1, 8])).tolist() == [0, 1, 11, 8]
    # Size of the layout: 2 rows per group, or at most k·(G − k) pairs per group (k = G/2).
    assert rows_per_step(ObjectiveConfig(name="dpo"), 8, 8) == 16
    assert rows_per_step(ObjectiveConfig(name="dpo", dpo_pairs="all"), 8, 8) == 8 * 16 * 2


def two_pairs():
    """Per-token log π_θ and log π_ref of two pairs (rows c1, r1, c2, r2), T = 3, padding
    marked by the mask. Sequence sums: s = (−2, −3, −1, −1), s_ref = (−2.5, −2.5, −0.5, −2),
    so z = s − s_ref = (0.5, −0.5, −0.5, 1.0) and h = z_c − z_r = (1, −1.5)."""
    lp = torch.tensor(
        [
            [-1.0, -1.0, 0.0],
            [-1.5, -1.5, 0.0],
            [-1.0, 0.0, 0.0],
            [-0.5, -0.25, -0.25],
        ],
        dtype=torch.float64,
        requires_grad=True,
    )
    ref = torch.tensor(
        [
            [-1.25, -1.25, -7.0],
            [-1.25, -1.25, -7.0],
            [-0.5, -7.0, -7.0],
            [-0.5, -0.5, -1.0],
        ],
        dtype=torch.float64,
    )
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.float64)
    return lp, ref, mask


def test_dpo_sigmoid_loss_and_gradient_on_two_pairs():
    lp, ref, mask = two_pairs()
    cfg = ObjectiveConfig(name="dpo", dpo_beta=0.5)
    loss, m = dpo_loss(lp, ref, mask, torch.ones(2), cfg)
    loss.backward()
    # ℓ = −log σ(β·h) = log(1 + e^(−β·h)): β·h = 0.5 and −0.75.
    l1, l2 = math.log1p(math.exp(-0.5)), math.log1p(math.exp(0.75))  # 0.474077, 1.136929
    assert float(loss.detach()) == pytest.approx((l1 + l2) / 2)  # mean over pairs: 0.805503
    # dℓ/dh = −β·σ(−β·h); h = z_c − z_r and z sums the row's tokens, so every masked token of
    # the chosen row gets dℓ/dh / 2 (two pairs), every token of the rejected row its negative.
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    g1 = -0.5 * sig(-0.5) / 2  # −0.094385
    g2 = -0.5 * sig(0.75) / 2  # −0.169795
    want = torch.tensor(
        [[g1, g1, 0.0], [-g1, -g1, 0.0], [g2, 0.0, 0.0], [-g2, -g2, -g2]], dtype=torch.float64
    )
    assert torch.allclose(lp.grad, want, atol=1e-12)
    # Metrics, means over the two pairs: h > 0 for the first only; margin β·h = (0.5, −0.75);
    # implicit rewards β·z: chosen (0.25, −0.25), rejected (−0.25, 0.5); sequence log π.
    assert m["dpo_pairs"] == 2.0
    assert m["dpo_reward_accuracy"] == 0.5
    assert m["dpo_margin"] == pytest.approx(-0.125)
    assert m["dpo_chosen_reward"] == pytest.approx(0.0)
    assert m["dpo_rejected_reward"] == pytest.approx(0.125)
    assert m["dpo_chosen_logprob"] == pytest.approx(-1.5)
    assert m["dpo_rejected_logprob"] == pytest.approx(-2.0)
    assert m["loss"] == pytest.approx((l1 + l2) / 2)


def test_ipo_loss_and_gradient_average_log_ratios_per_token():
    lp, ref, mask = two_pairs()
    cfg = ObjectiveConfig(name="dpo", dpo_beta=0.5, dpo_loss_type="ipo")
    loss, m = dpo_loss(lp, ref, mask, torch.ones(2), cfg)
    loss.backward()
    # Per-token z: (0.5/2, −0.5/2, −0.5/1, 1.0/3) = (0.25, −0.25, −0.5, 1/3);
    # h = (0.5, −5/6); target 1/(2β) = 1: ℓ = (h − 1)² = (0.25, (11/6)²).
    h1, h2 = 0.5, -5 / 6
    assert float(loss.detach()) == pytest.approx(((h1 - 1) ** 2 + (h2 - 1) ** 2) / 2)
    # dℓ/dh = 2(h − 1) = (−1, −11/3); divided by 2 pairs and by the row's token count.
    d1, d2 = 2 * (h1 - 1) / 2, 2 * (h2 - 1) / 2
    want = torch.tensor(
        [
            [d1 / 2, d1 / 2, 0.0],
            [-d1 / 2, -d1 / 2, 0.0],
            [d2, 0.0, 0.0],
            [-d2 / 3, -d2 / 3, -d2 / 3],
        ],
        dtype=torch.float64,
    )
    assert torch.allclose(lp.grad, want, atol=1e-12)
    # The margin is β·h of the h the loss sees: 0.5·(0.5 − 5/6)/2.
    assert m["dpo_margin"] == pytest.approx(0.5 * (h1 + h2) / 2)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_pairs_split_into_micro_batches_add_up(loss_type):
    # Each micro-batch divides by the step's pair count: the parts sum to the whole, value and
    # gradient.
    g = torch.Generator().manual_seed(0)
    lp = (-torch.rand(8, 5, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    ref = -torch.rand(8, 5, generator=g, dtype=torch.float64) * 2
    mask = (torch.rand(8, 5, generator=g) > 0.3).double()
    cfg = ObjectiveConfig(name="dpo", dpo_loss_type=loss_type)
    whole, _ = dpo_loss(lp, ref, mask, torch.ones(4), cfg)
    (gw,) = torch.autograd.grad(whole, lp)
    parts = [dpo_loss(lp[a : a + 4], ref[a : a + 4], mask[a : a + 4], torch.ones(2), cfg, 4.0)[0]
             for a in (0, 4)]  # fmt: skip
    (gp,) = torch.autograd.grad(sum(parts), lp)
    assert float(sum(parts).detach()) == pytest.approx(float(whole.detach()))
    assert torch.allclose(gp, gw)


def test_weight_zero_pair_counts_for_nothing_and_odd_rows_are_refused():
    lp, ref, mask = two_pairs()
    cfg = ObjectiveConfig(name="dpo", dpo_beta=0.5)
    loss, m = dpo_loss(lp, ref, mask, torch.tensor([1.0, 0.0]), cfg)
    loss.backward()
    # Only the first pair: ℓ = log(1 + e^(−0.5)) over 1 pair; no gradient on the second.
    assert float(loss.detach()) == pytest.approx(math.log1p(math.exp(-0.5)))
    assert lp.grad[2:].abs().max() == 0.0
    assert m["dpo_pairs"] == 1.0 and m["dpo_reward_accuracy"] == 1.0
    # All weights 0: loss 0 with a graph, finite metrics.
    loss, m = dpo_loss(lp, ref, mask, torch.zeros(2), cfg)
    assert float(loss.detach()) == 0.0 and loss.requires_grad and m["dpo_margin"] == 0.0
    with pytest.raises(ValueError, match="even"):
        dpo_loss(lp[:3], ref[:3], mask[:3], torch.ones(1), cfg)


def batch_of(n: int, width: int = 6) -> Batch:
    """Rows i: token ids i+1, row i has i % 3 + 2 tokens, the last one a response token."""
    ids = torch.zeros(n, width, dtype=torch.long)
    att = torch.zeros(n, width, dtype=torch.long)
    for i in range(n):
        ids[i, : i % 3 + 2] = i + 1
        att[i, : i % 3 + 2] = 1
    resp = att.float()
    resp[:, 0] = 0
    return Batch(ids, att, resp, torch.zeros(n, width), torch.zeros(n))


def test_pair_batch_lays_out_pairs_and_keeps_a_placeholder_when_all_tie():
    rewards = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])  # G = 3, 6 rows
    out, stats = pair_batch(batch_of(6), rewards, ObjectiveConfig(name="dpo"))
    # Group 0: chosen row 1, rejected row 0 (first of the lowest); group 1 tied.
    assert out.input_ids[:, 0].tolist() == [2, 1]
    assert out.advantages.tolist() == [1.0, 1.0]
    assert stats == {"dpo_tied_groups": 1.0}
    out, stats = pair_batch(batch_of(6), torch.ones(2, 3), ObjectiveConfig(name="dpo"))
    assert len(out) == 2 and out.response_mask.sum() == 0 and out.advantages.sum() == 0
    assert stats == {"dpo_tied_groups": 2.0}


@pytest.mark.parametrize("balanced", [True, False])
def test_micro_batches_hold_whole_pairs_on_every_rank(balanced):
    # 5 pairs over 2 ranks x 4 micro-batches: every micro-batch is whole pairs (row ids of a
    # pair are 2p+1, 2p+2), every rank gets 4 of them, each pair lands exactly once.
    batch = batch_of(10)
    batch.advantages = torch.ones(10)
    train = SimpleNamespace(token_balanced=balanced)
    seen = []
    for rank in range(2):
        engine = SimpleNamespace(rank=rank, world=2, micro_batches=4, device="cpu")
        mbs = _pair_micro_batches(engine, batch, torch.arange(5), train)
        assert len(mbs) == 4
        for mb in mbs:
            assert len(mb) % 2 == 0
            if mb.advantages.sum() == 0:  # placeholder: nothing to learn
                assert mb.response_mask.sum() == 0
                continue
            first = mb.input_ids[:, 0].tolist()
            for c, r in zip(first[0::2], first[1::2]):
                assert c % 2 == 1 and r == c + 1
                seen.append((c - 1) // 2)
    assert sorted(seen) == [0, 1, 2, 3, 4]


def test_dpo_config_rules():
    assert ObjectiveConfig(name="dpo").needs_reference
    assert not ObjectiveConfig(name="ppo").needs_reference
    assert ObjectiveConfig(name="ppo", kl_beta=0.1).needs_reference
    with pytest.raises(ValueError, match="dpo_beta"):
        ObjectiveConfig(name="dpo", kl_beta=0.1)
    with pytest.raises(ValueError, match="dpo_beta"):
        ObjectiveConfig(name="dpo", entropy_coef=0.01)
    with pytest.raises(ValueError):
        ObjectiveConfig(name="dpo", dpo_beta=0.0)


class _Out:
    def __init__(self, logits):
        self.logits = logits


class _FakeEngine:
    """Logits looked up from a table by the current token (a bigram model): enough for the
    step's shifting, masking and accumulation. Gradients accumulate; nothing is stepped."""

    def __init__(self, table: torch.nn.Embedding, micro_batches: int):
        self.table, self.micro_batches = table, micro_batches
        self.rank, self.world, self.device = 0, 1, "cpu"

    def forward_logits(self, mb):
        return self.table(mb.input_ids)

    def backward_and_step(self, loss):
        loss.backward()

    def grad_norm(self):
        return 0.0

    def lr(self):
        return 0.0


def test_dpo_train_step_accumulates_the_whole_batch_gradient():
    # 3 pairs in 2 token-balanced micro-batches (1 and 2 pairs), each divided by the step's 3
    # pairs: the accumulated gradient equals dpo_loss's on the whole batch scored at once.
    from asyncrl.learner.dpo_step import dpo_train_step
    from asyncrl.learner.logprobs import token_logprobs

    torch.manual_seed(0)
    vocab = 7
    table = torch.nn.Embedding(vocab, vocab)
    ref_table = torch.nn.Embedding(vocab, vocab).requires_grad_(False)
    batch = batch_of(6)
    batch.input_ids = batch.input_ids % vocab
    batch.advantages = torch.ones(6)
    cfg = ObjectiveConfig(name="dpo", dpo_beta=0.3)
    train = SimpleNamespace(token_balanced=True, mini_batches=1, ppo_epochs=1)

    def ref_model(input_ids, attention_mask):
        return _Out(ref_table(input_ids))

    m = dpo_train_step(_FakeEngine(table, 2), batch, train, cfg, 0.7, ref_model)
    got = table.weight.grad.clone()
    table.weight.grad = None
    targets, mask = batch.input_ids[:, 1:], batch.response_mask[:, 1:]
    lp = token_logprobs(table(batch.input_ids)[:, :-1], targets, temperature=0.7)
    with torch.no_grad():
        ref = token_logprobs(ref_table(batch.input_ids)[:, :-1], targets, temperature=0.7)
    loss, want_m = dpo_loss(lp, ref, mask, torch.ones(3), cfg)
    loss.backward()
    assert torch.allclose(got, table.weight.grad, atol=1e-6)
    assert m["loss"] == pytest.approx(want_m["loss"], abs=1e-6)
    assert m["dpo_pairs"] == 3.0
    for k in ("dpo_margin", "dpo_chosen_logprob", "dpo_reward_accuracy"):
        assert m[k] == pytest.approx(want_m[k], abs=1e-6), k

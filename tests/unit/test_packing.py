"""Padding-free micro-batches (learner/packing.py): the row plan, the index that unpacks
per-token scores, and the same loss and gradients as padded rows."""

from __future__ import annotations

import pytest
import torch

from asyncrl.learner.engine import Batch
from asyncrl.learner.loss_config import ObjectiveConfig
from asyncrl.learner.objectives import policy_loss
from asyncrl.learner.packing import (
    RowCost,
    balanced_rows,
    choose_rows,
    fit_narrower,
    pack,
    packing_works,
    padding_share,
    plan_rows,
    positions,
    score_tokens,
    spread_rows,
    target_width,
)


def test_first_fit_longest_first():
    # Width 6, lengths [5, 3, 2, 4]: 5 (row 0, room 1); 4 does not fit row 0 -> row 1
    # (room 2); 3 fits neither -> row 2 (room 3); 2 fits row 1 (room 2 -> 0).
    assert plan_rows([5, 3, 2, 4], 6) == [[0], [3, 2], [1]]
    # Widest row: row_tokens, or 4 x the longest; never narrower than the longest.
    assert target_width([5, 3], 0) == 20 and target_width([5, 3], 4) == 5


def test_rows_are_balanced_at_each_row_count():
    # Lengths 7, 7, 6, 6, 5 (31 tokens) over 3 rows. Spread (longest first onto the emptiest
    # row): 7 -> r0, 7 -> r1, 6 -> r2, 6 -> r2 (6 < 7), 5 -> r0 (7 = 7, lower index): loads
    # 12, 7, 12, width 12.
    assert spread_rows([7, 7, 6, 6, 5], 3) == ([[0, 4], [1], [2, 3]], 12)
    # First fit narrower than 12 in 3 rows, from ceil(31 / 3) = 11: 7, 7, 6 take a row each,
    # the second 6 needs a fourth: none.
    assert fit_narrower([7, 7, 6, 6, 5], 3, 12) is None
    # Two rows: the spread is 7+6+5 | 7+6 = 18 wide; first fit from 16: at 16 the 6 and 5
    # need a third row; at 17, 7 7 | 6 6 5: two rows, narrower than 18.
    assert spread_rows([7, 7, 6, 6, 5], 2) == ([[0, 2, 4], [1, 3]], 18)
    assert fit_narrower([7, 7, 6, 6, 5], 2, 18) == ([[0, 1], [2, 3, 4]], 17)
    # Least filler at most 14 wide. Row counts from widths 7, 10, 14 (1, 1.5, 2 x 7; 3 and 4 x
    # are cut to 14): 5 (and 6, more rows than sequences), 4, 3. Spread: 3 rows of 12 (36
    # positions), 4 of 11 (7, 7, 6+5, 6: 44), 5 of 7 (35); first fit narrows none of them.
    assert balanced_rows([7, 7, 6, 6, 5], 14) == ([[0], [1], [2], [3], [4]], 7)


def test_row_width_follows_the_cost_of_attention():
    # Lengths 7, 7, 6, 6, 5 (31 tokens), rows at most 4 x 7 = 28 wide: counts 2 to 5 (the test
    # above); the spread's 2 rows of 18 narrowed by first fit to 17 (34 positions), 3 of 12
    # (36), 4 of 11 (44), 5 of 7 (35).
    lengths = [7, 7, 6, 6, 5]
    # Attention free (varlen): fewest positions win, 34 at width 17.
    free = RowCost(linear=1.0, attention=1.0, varlen=True)
    assert choose_rows(lengths, 0, free) == ([[0, 1], [2, 3, 4]], 17)
    # Attention costly, rows x width x (1 + 10 x width): 2 x 17 x 171 = 5814, 3 x 12 x 121 =
    # 4356, 4 x 11 x 111 = 4884, 5 x 7 x 71 = 2485: one sequence per row.
    dense = RowCost(linear=1.0, attention=10.0, varlen=False)
    assert choose_rows(lengths, 0, dense) == ([[0], [1], [2], [3], [4]], 7)
    # An explicit width is a limit with least filler, whatever the cost: at 17 the spread's two
    # rows (18) do not fit, first fit's (17) do.
    assert choose_rows(lengths, 17, dense)[1] == 17


def test_layout_and_unpack_index():
    ids = torch.tensor([[11, 12, 13, 0], [21, 22, 0, 0], [31, 32, 33, 34]])
    # Widest 6, 9 tokens: 2 rows wanted, width ceil(9 / 2) = 5: the 4-token sequence -> row
    # 0 (room 1); 3 tokens -> row 1 (room 2); 2 tokens -> row 1 (room 0).
    p = pack(ids, [3, 2, 4], row_tokens=6)
    assert p.input_ids.tolist() == [[31, 32, 33, 34, 0], [11, 12, 13, 21, 22]]
    assert p.position_ids.tolist() == [[0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]
    # Next-token scores are [2, 4] packed (flat 0..7, 8 = the zero slot). Sequence 0 sits at
    # row 1 columns 0..2: its t = 0, 1 are flat 4, 5; t = 2 (its last token) is padding.
    # Sequence 1 at row 1 columns 3..4: t = 0 -> flat 7. Sequence 2 at row 0 columns 0..3:
    # t = 0..2 -> flat 0..2.
    assert p.index.reshape(3, 3).tolist() == [[4, 5, 8], [7, 8, 8], [0, 1, 2]]
    scores = torch.arange(8, dtype=torch.float32).reshape(2, 4) + 1
    assert p.unpack(scores).tolist() == [[5, 6, 0], [8, 0, 0], [1, 2, 3]]
    assert p.computed_positions == 10
    assert padding_share(10, 9) == pytest.approx(0.1)


class _Engine:
    """The two forward entries of learner.engine.Engine over a plain module."""

    def __init__(self, model):
        self.model = model

    def forward_logits(self, mb):
        return self.model(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits

    def forward_packed(self, input_ids, position_ids):
        return self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits


def _model(attn: str):
    from transformers import AutoModelForCausalLM

    from asyncrl.launch.bench_learner import SIZES, qwen2_config

    torch.manual_seed(0)
    cfg = qwen2_config(SIZES["tiny"])
    cfg._attn_implementation = attn
    return AutoModelForCausalLM.from_config(cfg).float()


def _batch(n: int = 7, seed: int = 1) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 12, (n,), generator=gen)
    width = int(lengths.max())
    col = torch.arange(width)[None, :]
    att = (col < lengths[:, None]).long()
    ids = torch.randint(4, 19, (n, width), generator=gen) * att
    resp = ((col >= 2) & (att > 0)).float()
    mu = -torch.rand(n, width, generator=gen) * resp
    return Batch(ids, att, resp, mu, torch.randn(n, generator=gen))


def _loss_and_grads(model, mb: Batch, cfg: ObjectiveConfig):
    model.zero_grad()
    lp, ent = score_tokens(_Engine(model), mb, temperature=0.7, entropy="grad")
    mask = mb.response_mask[:, 1:]
    loss, _ = policy_loss(lp, mb.behaviour_logprobs[:, 1:], mb.advantages, mask, cfg, entropy=ent)
    loss.backward()
    return float(loss.detach()), [p.grad.clone() for p in model.parameters()], lp.detach() * mask


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize(
    "objective",
    [
        {"name": "ppo"},
        {"name": "gspo", "agg": "seq-mean-token-mean"},
        {"name": "ppo", "entropy_coef": 0.01},
    ],
)
def test_packed_rows_give_the_padded_loss_and_gradients(attn, objective):
    model = _model(attn)
    cfg = ObjectiveConfig(**objective)
    padded = _batch()
    packed = _batch()
    lengths = [int(x) for x in packed.attention_mask.sum(1)]
    packed.layout = pack(packed.input_ids, lengths, row_tokens=0)
    # The packed forward computes fewer positions than the padded one; a test that packs
    # nothing proves nothing.
    assert positions(packed)[0] < positions(padded)[0]
    assert positions(packed)[1] == positions(padded)[1]
    loss_a, grads_a, lp_a = _loss_and_grads(model, padded, cfg)
    loss_b, grads_b, lp_b = _loss_and_grads(model, packed, cfg)
    # Same arithmetic per token in another layout: equal up to float32 rounding.
    assert loss_b == pytest.approx(loss_a, rel=1e-5, abs=1e-7)
    torch.testing.assert_close(lp_b, lp_a, rtol=1e-5, atol=1e-5)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-6)


def test_probe_accepts_hf_attention_and_refuses_a_model_that_mixes_sequences():
    assert packing_works(_model("sdpa"), 19, "cpu")

    class Leaky(torch.nn.Module):
        """Every position sees the whole row before it, packed sequences included."""

        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(19, 19)

        def forward(self, input_ids, position_ids=None, attention_mask=None, use_cache=None):
            return type("Out", (), {"logits": self.emb(input_ids).cumsum(1)})()

    assert not packing_works(Leaky(), 19, "cpu")

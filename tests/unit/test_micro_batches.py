"""Token-balanced micro-batch planning (pure logic of the engine's batching)."""

from __future__ import annotations

import torch

from asyncrl.learner.engine import Batch, balance_rows


def test_longest_first_into_the_lightest_bin():
    # Lengths 10, 9, 2, 2, 1, 1 into 2 bins: 10->b0, 9->b1, 2->b1 (9<10), 2->b0 (10<11),
    # 1->b1 (11<12), 1->b0 (12 = 12, lower index wins). b0 = rows {0, 3, 5} (13 tokens),
    # b1 = rows {1, 2, 4} (12 tokens); consecutive rows would give 21 vs 4.
    lengths = [10, 9, 2, 2, 1, 1]
    b0, b1 = balance_rows(lengths, rank=0, world=1, micro_batches=2)
    assert b0.tolist() == [0, 3, 5] and b1.tolist() == [1, 2, 4]
    # Over 2 ranks with one micro-batch each, the same bins become the ranks' shards.
    assert balance_rows(lengths, 0, 2, 1)[0].tolist() == [0, 3, 5]
    assert balance_rows(lengths, 1, 2, 1)[0].tolist() == [1, 2, 4]


def test_every_rank_gets_its_micro_batches_even_when_empty():
    parts = balance_rows([5], rank=1, world=2, micro_batches=3)
    assert len(parts) == 3 and all(len(p) == 0 for p in parts)
    everyone = [ix for r in range(2) for ix in balance_rows([3, 1, 4, 1, 5], r, 2, 2)]
    assert sorted(torch.cat(everyone).tolist()) == [0, 1, 2, 3, 4]


def test_trimmed_drops_padding_beyond_the_longest_row():
    ids = torch.tensor([[1, 2, 0, 0], [3, 0, 0, 0]])
    att = (ids > 0).long()
    b = Batch(ids, att, att.float(), torch.zeros(2, 4), torch.zeros(2)).trimmed()
    assert b.input_ids.shape == (2, 2) and b.advantages.shape == (2,)

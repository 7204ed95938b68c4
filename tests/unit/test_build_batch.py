"""`build_batch`'s padded layout: groups of different prompt and response lengths, every
tensor written out by hand."""

from __future__ import annotations

import numpy as np
import torch

from asyncrl.buffer.replay import BufferedGroup
from asyncrl.learner.data import Prompt
from asyncrl.learner.hub.groups import GroupData
from asyncrl.learner.loss_config import AdvantageConfig
from asyncrl.learner.step import build_batch


def _group(prompt, responses, logprobs, rewards, masks=None) -> BufferedGroup:
    data = GroupData(
        prompt=Prompt(0, "p", np.asarray(prompt, np.int32), {"prompt": "p"}),
        responses=[np.asarray(r, np.int32) for r in responses],
        logprobs=[np.asarray(lp, np.float32) for lp in logprobs],
        versions=[np.zeros(len(r), np.int32) for r in responses],
        rewards=np.asarray(rewards, np.float32),
        finish_reasons=["stop"] * len(responses),
        generator_id="g",
        masks=None if masks is None else [np.asarray(m, np.uint8) for m in masks],
    )
    return BufferedGroup("l", 0, 0, data.nbytes, data)


def test_rows_are_prompt_then_response_right_padded():
    a = _group([1, 2], [[3], [4, 5, 6]], [[-0.5], [-0.1, -0.2, -0.3]], [1.0, 0.0])
    b = _group([7, 8, 9], [[10, 11], []], [[-1.0, -2.0], []], [0.0, 0.0])
    batch, stats = build_batch([a, b], AdvantageConfig(), pad_id=99)
    # Row lengths: 2+1, 2+3, 3+2, 3+0 -> the batch is 5 wide; pads are 99.
    assert batch.input_ids.tolist() == [
        [1, 2, 3, 99, 99],
        [1, 2, 4, 5, 6],
        [7, 8, 9, 10, 11],
        [7, 8, 9, 99, 99],
    ]
    assert batch.attention_mask.tolist() == [
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 0, 0],
    ]
    # Response positions only: after the prompt, before the pad.
    assert batch.response_mask.tolist() == [
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 1],
        [0, 0, 0, 1, 1],
        [0, 0, 0, 0, 0],
    ]
    mu = torch.tensor(
        [
            [0, 0, -0.5, 0, 0],
            [0, 0, -0.1, -0.2, -0.3],
            [0, 0, 0, -1.0, -2.0],
            [0, 0, 0, 0, 0],
        ]
    )
    assert torch.allclose(batch.behaviour_logprobs, mu)
    assert batch.input_ids.dtype == torch.long and batch.attention_mask.dtype == torch.long
    assert stats["response_tokens"] == 6.0  # 1 + 3 + 2 + 0
    # grpo: group a's rewards (1, 0) -> mean 0.5, std 0.7071 -> +-0.7071; b's are all 0 -> 0.
    assert torch.allclose(batch.advantages, torch.tensor([0.7071, -0.7071, 0.0, 0.0]), atol=1e-4)


def test_loss_mask_lands_on_the_response_positions():
    g = _group([1], [[2, 3, 4], [5]], [[-1, 0, -1], [-1]], [1.0, 0.0], masks=[[1, 0, 1], [1]])
    batch, stats = build_batch([g], AdvantageConfig(), pad_id=0)
    # Row 0: prompt at 0, response 1..3 with the environment's token (mask 0) at 2.
    assert batch.response_mask.tolist() == [[0, 1, 0, 1], [0, 1, 0, 0]]
    # 4 response tokens, 1 of them the environment's.
    assert stats["env_token_fraction"] == 0.25

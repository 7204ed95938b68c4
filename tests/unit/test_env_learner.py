"""Multi-turn episodes on the learner's side: the loss mask reaches the batch, environment
tokens get no gradient whatever their content, intake scores the final answer, and the wire
checks of the mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asyncrl.buffer.replay import BufferedGroup
from asyncrl.learner.data import Prompt
from asyncrl.learner.hub.groups import GroupData, spill, unspill
from asyncrl.learner.hub.intake import last_model_turn
from asyncrl.learner.logprobs import token_logprobs
from asyncrl.learner.loss_config import AdvantageConfig, ObjectiveConfig
from asyncrl.learner.objectives import policy_loss
from asyncrl.learner.step import build_batch
from asyncrl.protocol.codec import ProtocolError
from asyncrl.protocol.messages import RolloutGroup
from asyncrl.protocol.validate import RolloutLimits, validate_rollout

# Prompt of 2 tokens; response of 7: model, model, env, env, model, env, model.
PROMPT = np.array([1, 2], np.int32)
MASK = np.array([1, 1, 0, 0, 1, 0, 1], np.uint8)


def _group(responses, masks, rewards=(1.0, 0.0)) -> BufferedGroup:
    data = GroupData(
        prompt=Prompt(0, "p", PROMPT, {"prompt": "p"}),
        responses=[np.asarray(r, np.int32) for r in responses],
        logprobs=[np.where(m == 1, -0.7, 0.0).astype(np.float32) for m in masks],
        versions=[np.zeros(len(r), np.int32) for r in responses],
        rewards=np.asarray(rewards, np.float32),
        finish_reasons=["stop", "stop"],
        generator_id="g",
        masks=list(masks),
    )
    return BufferedGroup("l", 0, 0, data.nbytes, data)


def test_batch_mask_is_the_loss_mask_after_the_prompt():
    g = _group([[3, 4, 5, 6, 7, 8, 9], [3, 4, 5, 6, 7, 8, 9]], [MASK, MASK])
    batch, stats = build_batch([g], AdvantageConfig(), pad_id=0)
    # Hand-derived: positions 0-1 are the prompt (0), then the loss mask as sent.
    assert batch.response_mask[0].tolist() == [0, 0, 1, 1, 0, 0, 1, 0, 1]
    # 3 of the 7 response tokens per sample are the environment's.
    assert stats["env_token_fraction"] == pytest.approx(3 / 7)
    assert stats["response_tokens"] == 8.0  # the model's tokens only, both samples
    # Spilled to disk and back (checkpoints) the masks survive.
    back = unspill(spill(g), type("P", (), {"prompts": [g.payload.prompt]})())
    assert [m.tolist() for m in back.payload.masks] == [MASK.tolist()] * 2


def test_environment_tokens_get_no_gradient():
    torch.manual_seed(0)
    responses = [[3, 4, 5, 6, 7, 8, 9], [3, 4, 5, 6, 7, 8, 9]]
    batch, _ = build_batch([_group(responses, [MASK, MASK])], AdvantageConfig(), pad_id=0)
    logits = torch.randn(2, 9, 12, requires_grad=True)

    def loss_of(input_ids):
        lp = token_logprobs(logits[:, :-1], input_ids[:, 1:])
        mask = batch.response_mask[:, 1:]
        loss, _ = policy_loss(
            lp, batch.behaviour_logprobs[:, 1:], batch.advantages, mask, ObjectiveConfig()
        )
        return loss

    loss = loss_of(batch.input_ids)
    loss.backward()
    # Logits at position t predict token t+1: env tokens sit at sequence positions 4, 5, 7
    # (prompt 2 + response offsets 2, 3, 5), so the logits at 3, 4, 6 get exactly zero
    # gradient, and the model tokens' (positions 1, 2, 5, 7) do not (sample 0, advantage > 0;
    # sample 1's ratios exp(lp - mu) sit below 1 - eps with A < 0: PPO's clip zeroes it).
    grad = logits.grad.abs().sum(-1)
    assert grad[:, [3, 4, 6]].eq(0).all()
    assert grad[0, [1, 2, 5, 7]].gt(0).all()
    # Whatever the environment wrote, the loss is the same.
    other = batch.input_ids.clone()
    other[:, [4, 5, 7]] = 11
    assert torch.equal(loss_of(other).detach(), loss.detach())


def test_last_model_turn_is_the_final_answer():
    tokens = np.arange(7)
    assert last_model_turn(tokens, MASK).tolist() == [6]
    assert last_model_turn(tokens, np.ones(7, np.uint8)).tolist() == list(range(7))


def _msg(**kw) -> RolloutGroup:
    base = dict(
        lease_id="ab" * 16,
        generator_id="g",
        tokens=np.arange(7, dtype=np.int32),
        logprobs=np.where(MASK == 1, -0.5, 0.0).astype(np.float32),
        versions=np.ones(7, np.int32),
        lengths=np.array([4, 3], np.int32),
        finish_reasons=["stop", "max_turns"],
        generate_seconds=0.1,
        loss_mask=MASK.copy(),
    )
    base.update(kw)
    return RolloutGroup(**base)


LIMITS = RolloutLimits(vocab_size=10, max_new_tokens=8)


def test_valid_episode_group_passes():
    # Sample 1: tokens 0-3, mask 1 1 0 0; sample 2: tokens 4-6, mask 1 0 1 (both start on a
    # model token; env tokens carry logprob 0).
    validate_rollout(_msg(), LIMITS, 2, 1, 1)
    validate_rollout(_msg(env_rewards=np.array([0.5, -1], np.float32)), LIMITS, 2, 1, 1)


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"loss_mask": MASK[:6].copy()}, "bad_mask"),  # one entry short
        ({"loss_mask": np.array([1, 1, 0, 0, 2, 0, 1], np.uint8)}, "bad_mask"),
        ({"loss_mask": np.array([1, 1, 0, 0, 0, 1, 1], np.uint8)}, "bad_mask"),  # starts on env
        # A logprob smuggled onto an environment token (index 2).
        ({"logprobs": np.array([-0.5, -0.5, -0.1, 0, -0.5, 0, -0.5], np.float32)}, "bad_mask"),
        ({"env_rewards": np.array([1.0], np.float32)}, "bad_env_rewards"),
        ({"env_rewards": np.array([np.nan, 0], np.float32)}, "bad_env_rewards"),
        ({"finish_reasons": ["stop", "tool_crash"]}, "bad_finish_reasons"),
    ],
)
def test_bad_masks_are_refused(change, reason):
    with pytest.raises(ProtocolError) as e:
        validate_rollout(_msg(**change), LIMITS, 2, 1, 1)
    assert e.value.reason == reason

"""A scored group as the trainer needs it, and its spill form for checkpoints."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from asyncrl.buffer.replay import BufferedGroup
from asyncrl.learner.data import Prompt, PromptSource


@dataclass
class GroupData:
    """A complete, rewarded group as the trainer needs it."""

    prompt: Prompt
    responses: list[np.ndarray]  # int32 token ids per sample
    logprobs: list[np.ndarray]  # float32 behaviour logprobs per sample
    versions: list[np.ndarray]  # int32 per-token weights versions
    rewards: np.ndarray  # float32 [G]
    finish_reasons: list[str]
    generator_id: str
    baseline_reward: float | None = None
    reward_metrics: dict = field(default_factory=dict)
    # Multi-turn episodes: per sample, 1 on model tokens, 0 on environment tokens (never
    # trained on); None = every response token is the model's.
    masks: list[np.ndarray] | None = None

    @property
    def nbytes(self) -> int:
        """What the buffer's byte bound counts: tokens, logprobs and versions (same width)
        of every response, plus the prompt."""
        masks = sum(m.nbytes for m in self.masks) if self.masks is not None else 0
        return sum(a.nbytes for a in self.responses) * 3 + self.prompt.token_ids.nbytes + masks


def spill(g: BufferedGroup) -> dict:
    d: GroupData = g.payload
    return {
        "lease_id": g.lease_id,
        "prompt_index": g.prompt_index,
        "version": g.version,
        "nbytes": g.nbytes,
        "uses": g.uses,
        "responses": [a.tolist() for a in d.responses],
        "logprobs": [a.tolist() for a in d.logprobs],
        "versions": [a.tolist() for a in d.versions],
        "rewards": d.rewards.tolist(),
        "finish_reasons": d.finish_reasons,
        "generator_id": d.generator_id,
        "baseline_reward": d.baseline_reward,
        "reward_metrics": d.reward_metrics,
        "masks": None if d.masks is None else [m.tolist() for m in d.masks],
    }


def unspill(item: dict, prompts: PromptSource) -> BufferedGroup:
    data = GroupData(
        prompt=prompts.prompts[item["prompt_index"]],
        responses=[np.asarray(a, np.int32) for a in item["responses"]],
        logprobs=[np.asarray(a, np.float32) for a in item["logprobs"]],
        versions=[np.asarray(a, np.int32) for a in item["versions"]],
        rewards=np.asarray(item["rewards"], np.float32),
        finish_reasons=list(item["finish_reasons"]),
        generator_id=item["generator_id"],
        baseline_reward=item["baseline_reward"],
        reward_metrics=dict(item["reward_metrics"]),
        # Spills from before multi-turn rollouts have no masks: every token the model's.
        masks=None
        if item.get("masks") is None
        else [np.asarray(m, np.uint8) for m in item["masks"]],
    )
    return BufferedGroup(
        item["lease_id"],
        item["prompt_index"],
        item["version"],
        item["nbytes"],
        data,
        uses=item["uses"],
    )

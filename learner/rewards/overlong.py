"""DAPO's soft overlong punishment (arXiv 2503.14476, eq. 13), added to another reward.

Responses that run into the last `cache_length` tokens before `max_length` lose reward
linearly, down to -1 at and beyond `max_length`: a graded signal against rambling that
does not punish a response for being cut off as hard as a flat -1 would.
"""

from __future__ import annotations

import logging

from asyncrl.learner.rewards import RewardFunction, RewardResult
from asyncrl.learner.rewards.config import OverlongConfig

logger = logging.getLogger(__name__)


def overlong_penalty(n: int, max_length: int, cache_length: int) -> float:
    """0 up to L_max - L_cache, then ((L_max - L_cache) - n) / L_cache, and -1 past L_max."""
    expected = max_length - cache_length
    if n <= expected:
        return 0.0
    if n <= max_length:
        return (expected - n) / cache_length
    return -1.0


class OverlongPenalty:
    """Wraps a base reward, adding the per-completion overlong penalty."""

    def __init__(self, base: RewardFunction, cfg: OverlongConfig):
        if cfg.max_length is None or cfg.cache_length is None:
            raise ValueError(
                "reward.overlong needs reward.overlong.max_length and reward.overlong.cache_length"
            )
        self.base = base
        self.max_length = cfg.max_length
        self.cache_length = cfg.cache_length

    def __call__(
        self, prompt: str, completions: list[str], row: dict, completion_lengths: list[int]
    ) -> RewardResult:
        if len(completion_lengths) != len(completions):
            raise ValueError(
                f"overlong penalty: {len(completion_lengths)} lengths for "
                f"{len(completions)} completions"
            )
        result = self.base(prompt, completions, row, completion_lengths)
        penalties = [
            overlong_penalty(int(n), self.max_length, self.cache_length) for n in completion_lengths
        ]
        rewards = [r + p for r, p in zip(result.rewards, penalties)]
        metrics = dict(result.metrics)
        metrics["overlong_penalty_mean"] = sum(penalties) / len(penalties) if penalties else 0.0
        return RewardResult(rewards, metrics)

    def close(self) -> None:
        self.base.close()

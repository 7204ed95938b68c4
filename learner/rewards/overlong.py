"""DAPO's soft overlong punishment (arXiv 2503.14476, eq. 13), as a reward function.

Responses that run into the last `cache_length` tokens before `max_length` lose reward
linearly, down to -1 at and beyond `max_length`: a graded signal against rambling that
does not punish a response for being cut off as hard as a flat -1 would. Listed in
`reward.functions` as `overlong` (or switched on by `reward.overlong.enabled`), it is added
to the other functions' rewards with its weight.
"""

from __future__ import annotations

from asyncrl.learner.rewards import RewardInput, RewardResult
from asyncrl.learner.rewards.config import RewardConfig


def overlong_penalty(n: int, max_length: int, cache_length: int) -> float:
    """0 up to L_max - L_cache, then ((L_max - L_cache) - n) / L_cache, and -1 past L_max."""
    expected = max_length - cache_length
    if n <= expected:
        return 0.0
    if n <= max_length:
        return (expected - n) / cache_length
    return -1.0


class OverlongReward:
    """The per-completion penalty from the completion's token count."""

    def __init__(self, cfg: RewardConfig):
        ov = cfg.overlong
        if ov.max_length is None or ov.cache_length is None:
            raise ValueError(
                "reward.overlong needs reward.overlong.max_length and reward.overlong.cache_length"
            )
        self.max_length = ov.max_length
        self.cache_length = ov.cache_length

    def __call__(self, inp: RewardInput) -> RewardResult:
        penalties: list[float | None] = [
            overlong_penalty(len(ids), self.max_length, self.cache_length)
            for ids in inp.completion_ids
        ]
        n = max(len(penalties), 1)
        return RewardResult(penalties, {"overlong_penalty_mean": sum(penalties) / n})

    def close(self) -> None:
        pass

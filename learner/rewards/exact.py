"""Exact-match reward: the stripped completion equals the row's answer (the tiny task)."""

from __future__ import annotations

from asyncrl.learner.rewards import RewardInput, RewardResult
from asyncrl.learner.rewards.config import RewardConfig


class ExactReward:
    def __init__(self, cfg: RewardConfig):
        self.field = cfg.answer_field

    def __call__(self, inp: RewardInput) -> RewardResult:
        row = inp.row
        if self.field not in row:
            raise KeyError(
                f"reward 'exact' needs the answer in row field {self.field!r}; set "
                "reward.answer_field to the dataset's answer column"
            )
        answer = str(row[self.field]).strip()
        return RewardResult([1.0 if c.strip() == answer else 0.0 for c in inp.completions])

    def close(self) -> None:
        pass

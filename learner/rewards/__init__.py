"""Rewards: score a completed group at intake (DESIGN.md, "Rewards").

`setup_reward(cfg)` returns a callable `fn(prompt, completions, row, completion_lengths)
-> RewardResult` with a `close()`; the hub calls it off the training thread. Each reward
lives in its own module and is imported only when chosen, so this package stays cheap to
import.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Protocol

from asyncrl.learner.rewards.config import OverlongConfig, RewardConfig

__all__ = [
    "OverlongConfig",
    "RewardConfig",
    "RewardFunction",
    "RewardResult",
    "has_variance",
    "setup_reward",
]


@dataclass
class RewardResult:
    rewards: list[float]  # one per completion
    metrics: dict[str, float] = field(default_factory=dict)  # averaged over groups by the learner


class RewardFunction(Protocol):
    def __call__(
        self, prompt: str, completions: list[str], row: dict, completion_lengths: list[int]
    ) -> RewardResult: ...

    def close(self) -> None: ...


_IMPLEMENTATIONS = {
    "exact": "asyncrl.learner.rewards.exact:ExactReward",
    "math": "asyncrl.learner.rewards.math:MathReward",
    "ttrl": "asyncrl.learner.rewards.ttrl:TTRLReward",
    "reward_model": "asyncrl.learner.rewards.reward_model:RewardModelReward",
    "plugin": "asyncrl.learner.rewards.plugin:PluginReward",
}


def setup_reward(cfg: RewardConfig) -> RewardFunction:
    """The configured reward, wrapped with DAPO's overlong penalty when enabled."""
    module, cls = _IMPLEMENTATIONS[cfg.name].split(":")
    fn = getattr(importlib.import_module(module), cls)(cfg)
    if cfg.overlong.enabled:
        from asyncrl.learner.rewards.overlong import OverlongPenalty

        fn = OverlongPenalty(fn, cfg.overlong)
    return fn


def has_variance(rewards: list[float], tol: float = 1e-6) -> bool:
    """Whether a group carries a learning signal (dynamic sampling drops it otherwise)."""
    return len(rewards) >= 2 and max(rewards) - min(rewards) > tol

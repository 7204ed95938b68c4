"""Rewards: score a completed group at intake (DESIGN.md, "Rewards").

`setup_reward(cfg)` returns a callable `fn(RewardInput) -> RewardResult` with a `close()`: the
weighted sum of the functions in `reward.functions` (built-ins and TRL-style plug-ins,
`learner.rewards.combine`). The hub calls it in its reward pool, evaluation on rank 0. Each
reward lives in its own module and is imported only when chosen, so this package stays cheap
to import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from asyncrl.learner.rewards.config import OverlongConfig, RewardConfig

if TYPE_CHECKING:
    from asyncrl.learner.rewards.combine import CombinedReward

__all__ = [
    "OverlongConfig",
    "RewardConfig",
    "RewardFunction",
    "RewardInput",
    "RewardResult",
    "completion_text",
    "has_variance",
    "setup_reward",
]


@dataclass
class RewardInput:
    """One prompt's group of completions, as every reward function sees it."""

    prompt: Any  # the row's prompt value: a string, or a list of chat messages
    prompt_text: str  # what the model read (chat template applied)
    completions: list[str]  # decoded completion texts
    completion_ids: list[list[int]]  # the generated token ids, one list per completion
    row: dict  # the dataset row
    step: int = 0  # the policy version that sampled the group (TRL's trainer_state.global_step)
    # Why each sample ended; multi-turn episodes add max_turns, budget and tool_timeout.
    finish_reasons: list[str] = field(default_factory=list)
    # Multi-turn episodes: completions are the final answers (last model turns), and plug-ins
    # get `finish_reasons` as a keyword.
    episodes: bool = False
    # Test-time RL: the row's label, withheld from `row`; for label metrics only (TTRL's
    # pseudo-label accuracy), never for a reward.
    withheld_label: Any = None

    @property
    def chat(self) -> bool:
        return isinstance(self.prompt, list)


@dataclass
class RewardResult:
    # One per completion; None = this function gives this sample no reward (TRL's contract).
    rewards: list[float | None]
    metrics: dict[str, float] = field(default_factory=dict)  # averaged over groups
    # A voting reward's answer per completion (equal ids = equivalent answers, -1 = none):
    # lets the learner keep a subsample stratified by answer (reward.ttrl.keep).
    clusters: list[int] | None = None


class RewardFunction(Protocol):
    def __call__(self, inp: RewardInput) -> RewardResult: ...

    def close(self) -> None: ...


def completion_text(c: Any) -> str:
    """A completion's text whether it is a string or a message list ([{"content": ...}])."""
    if isinstance(c, list):
        return "".join(str(m.get("content", "")) for m in c if isinstance(m, dict))
    return str(c)


def setup_reward(cfg: RewardConfig) -> CombinedReward:
    """The configured functions, weighted and summed (see `combine.CombinedReward`; it also
    scores ReMax's greedy baseline, `score_baseline`)."""
    from asyncrl.learner.rewards.combine import CombinedReward

    return CombinedReward(cfg)


def has_variance(rewards: list[float], tol: float = 1e-6) -> bool:
    """Whether a group carries a learning signal (dynamic sampling drops it otherwise)."""
    return len(rewards) >= 2 and max(rewards) - min(rewards) > tol

"""Label-free TTRL reward (arXiv 2504.16084): the group's majority answer is the pseudo label.

Each completion's final answer is extracted as in `learner.rewards.math`; answers vote, the
most common one wins (ties go to the answer seen first; completions without an answer do not
vote), and completions agreeing with it get 1.0. Equivalence here is the cheap in-process one
(exact numbers, normalised strings): voting compares every pair of answers, far too many
checks to send to math-verify on the intake path.
"""

from __future__ import annotations

import logging

from asyncrl.learner.rewards import RewardInput, RewardResult
from asyncrl.learner.rewards.config import RewardConfig
from asyncrl.learner.rewards.math import (
    extract_answer,
    gold_answer,
    normalize,
    numbers_equal,
    parse_number,
)

logger = logging.getLogger(__name__)


def answer_key(answer: str) -> tuple:
    """Canonical form for voting: the exact value of a number, else the normalised string."""
    num = parse_number(answer)
    return ("num", num) if num is not None else ("str", normalize(answer))


def keys_equal(a: tuple, b: tuple) -> bool:
    if a[0] == b[0] == "num":
        return numbers_equal(a[1], b[1])
    return a == b


def majority(answers: list[str | None]) -> str | None:
    """The most common answer (first seen wins ties); None when no completion has one."""
    counts: dict[tuple, int] = {}
    first: dict[tuple, str] = {}
    for a in answers:
        if a is None:
            continue
        k = answer_key(a)
        # Join the first cluster it matches, so "0.333333" votes with "1/3".
        k = next((c for c in counts if keys_equal(c, k)), k)
        counts[k] = counts.get(k, 0) + 1
        first.setdefault(k, a)
    if not counts:
        return None
    # dicts keep insertion order and max() returns the first maximum: ties go to first seen.
    best = max(counts, key=counts.__getitem__)
    return first[best]


class TTRLReward:
    """1.0 for completions agreeing with the group's majority answer, else 0.0."""

    def __init__(self, cfg: RewardConfig):
        self.field = cfg.answer_field

    def __call__(self, inp: RewardInput) -> RewardResult:
        row, completions = inp.row, inp.completions
        answers = [extract_answer(c) for c in completions]
        label = majority(answers)
        n = max(len(completions), 1)
        metrics = {"reward_extracted_frac": sum(a is not None for a in answers) / n}
        if label is None:
            rewards = [0.0] * len(completions)
        else:
            key = answer_key(label)
            rewards = [
                1.0 if a is not None and keys_equal(answer_key(a), key) else 0.0 for a in answers
            ]
        metrics["ttrl_majority_frac"] = sum(rewards) / n
        if self.field in row and row[self.field] is not None:
            truth = answer_key(gold_answer(row[self.field]))
            metrics["ttrl_label_accuracy"] = float(
                label is not None and keys_equal(answer_key(label), truth)
            )
        return RewardResult(rewards, metrics)

    def close(self) -> None:
        pass

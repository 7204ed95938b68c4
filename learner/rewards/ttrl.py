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


def vote(answers: list[str | None]) -> tuple[str | None, list[int]]:
    """The most common answer (first seen wins ties; None when no completion has one) and each
    completion's cluster: the index of its answer among the distinct answers in order of first
    appearance, -1 without an answer."""
    counts: list[int] = []
    keys: list[tuple] = []
    first: list[str] = []
    clusters: list[int] = []
    for a in answers:
        if a is None:
            clusters.append(-1)
            continue
        k = answer_key(a)
        # Join the first cluster it matches, so "0.333333" votes with "1/3".
        c = next((j for j, known in enumerate(keys) if keys_equal(known, k)), len(keys))
        if c == len(keys):
            keys.append(k)
            first.append(a)
            counts.append(0)
        counts[c] += 1
        clusters.append(c)
    if not counts:
        return None, clusters
    # max() returns the first maximum: ties go to the answer seen first.
    return first[max(range(len(counts)), key=counts.__getitem__)], clusters


def majority(answers: list[str | None]) -> str | None:
    """The most common answer (first seen wins ties); None when no completion has one."""
    return vote(answers)[0]


def agrees(answer: str | None, label: str | None) -> bool:
    return (
        answer is not None
        and label is not None
        and keys_equal(answer_key(answer), answer_key(label))
    )


class TTRLReward:
    """1.0 for completions agreeing with the group's majority answer, else 0.0.

    Metrics (averaged over groups): ttrl_majority_frac, the majority ratio (share of the
    samples that agree with the pseudo label); and where the row's label is known (in the row,
    or withheld at test time): ttrl_label_accuracy, whether the pseudo label is right (maj@N
    over the voted samples), and ttrl_reward_accuracy, the share of samples whose pseudo
    reward equals the reward the label would give.
    """

    def __init__(self, cfg: RewardConfig):
        self.field = cfg.answer_field

    def __call__(self, inp: RewardInput) -> RewardResult:
        answers = [extract_answer(c) for c in inp.completions]
        label, clusters = vote(answers)
        n = max(len(answers), 1)
        rewards = [1.0 if agrees(a, label) else 0.0 for a in answers]
        metrics = {
            "reward_extracted_frac": sum(a is not None for a in answers) / n,
            "ttrl_majority_frac": sum(rewards) / n,
        }
        truth = self._truth(inp)
        if truth is not None:
            gold = gold_answer(truth)
            metrics["ttrl_label_accuracy"] = float(agrees(label, gold))
            right = [float(agrees(a, gold)) for a in answers]
            metrics["ttrl_reward_accuracy"] = sum(x == y for x, y in zip(rewards, right)) / n
        return RewardResult(rewards, metrics, clusters)

    def score_against_group(self, inp: RewardInput, completion: str) -> float:
        """One more completion (ReMax's greedy baseline) scored against the group's pseudo
        label, without a vote of its own: scored alone it would be its own majority, 1."""
        label, _ = vote([extract_answer(c) for c in inp.completions])
        return 1.0 if agrees(extract_answer(completion), label) else 0.0

    def _truth(self, inp: RewardInput):
        value = inp.row.get(self.field)
        return inp.withheld_label if value is None else value

    def close(self) -> None:
        pass

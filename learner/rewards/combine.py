"""The configured reward functions, weighted and summed the way TRL's GRPOTrainer does.

Each function gives one float or None per completion. A sample's reward is the weighted sum
over the functions that scored it (None skipped, TRL's nan-aware sum); a sample that no
function scored gets 0, as in TRL, and a group in which no function scored any sample fails
(raises), so a reward that returns None for everything counts towards
`reward.max_consecutive_failures` instead of training on a group of zeros.

Completion texts are cut to their last `reward.max_completion_chars` characters before any
function sees them. Metrics: `reward_<function>_mean` per function (mean over the samples it
scored) next to the built-ins' own.
"""

from __future__ import annotations

import importlib
import logging
import re
from dataclasses import replace

from asyncrl.learner.rewards import RewardInput, RewardResult
from asyncrl.learner.rewards.config import RewardConfig

logger = logging.getLogger(__name__)

_BUILTINS = {
    "exact": "asyncrl.learner.rewards.exact:ExactReward",
    "math": "asyncrl.learner.rewards.math:MathReward",
    "ttrl": "asyncrl.learner.rewards.ttrl:TTRLReward",
    "reward_model": "asyncrl.learner.rewards.reward_model:RewardModelReward",
    "overlong": "asyncrl.learner.rewards.overlong:OverlongReward",
}


class NoReward(ValueError):
    """No reward function scored any completion of a group."""


def function_labels(specs: list[str]) -> list[str]:
    """Bounded metric-name parts: the built-in's name or the plug-in's function name, made
    unique by a numeric suffix."""
    labels: list[str] = []
    for spec in specs:
        base = spec.rpartition(":")[2].rpartition(".")[2] if ":" in spec else spec
        base = re.sub(r"[^A-Za-z0-9_]", "_", base).lower() or "fn"
        label, k = base, 2
        while label in labels:
            label, k = f"{base}_{k}", k + 1
        labels.append(label)
    return labels


def build_function(spec: str, label: str, cfg: RewardConfig):
    if spec in _BUILTINS:
        module, cls = _BUILTINS[spec].split(":")
        return getattr(importlib.import_module(module), cls)(cfg)
    from asyncrl.learner.rewards.plugin import PluginReward

    return PluginReward(spec, label)


def cap_text(text: str, limit: int) -> str:
    # The tail holds the final answer; the head of a runaway completion is what goes.
    return text if len(text) <= limit else text[-limit:]


class CombinedReward:
    def __init__(self, cfg: RewardConfig):
        specs = cfg.resolved()
        self.labels = function_labels([s for s, _ in specs])
        self.weights = [w for _, w in specs]
        self.max_chars = cfg.max_completion_chars
        self.functions = []
        try:
            for (spec, _), label in zip(specs, self.labels):
                self.functions.append(build_function(spec, label, cfg))
        except BaseException:
            self.close()
            raise

    def __call__(self, inp: RewardInput, weights: list[float] | None = None) -> RewardResult:
        """The weighted sum of the functions' rewards; `weights` (one per function) replace
        the configured ones (a live change of reward.weights)."""
        if weights is None or len(weights) != len(self.functions):
            weights = self.weights
        texts = [cap_text(c, self.max_chars) for c in inp.completions]
        if len(inp.completion_ids) != len(texts):
            raise ValueError(
                f"{len(inp.completion_ids)} completion id lists for {len(texts)} completions"
            )
        inp = replace(inp, completions=texts)
        n = len(texts)
        totals: list[float | None] = [None] * n
        metrics: dict[str, float] = {}
        clusters = None
        for fn, label, weight in zip(self.functions, self.labels, weights):
            res = fn(inp)
            if clusters is None and res.clusters is not None and len(res.clusters) == n:
                clusters = list(res.clusters)
            if len(res.rewards) != n:
                raise ValueError(f"reward {label} returned {len(res.rewards)} rewards for {n}")
            scored = [r for r in res.rewards if r is not None]
            if scored:
                metrics[f"reward_{label}_mean"] = sum(scored) / len(scored)
            for i, r in enumerate(res.rewards):
                if r is not None:
                    totals[i] = (totals[i] or 0.0) + weight * r
            metrics.update(res.metrics)
        if n and all(t is None for t in totals):
            raise NoReward(
                f"no reward function ({', '.join(self.labels)}) scored any of the {n} "
                "completions (all returned None); check the dataset columns they need"
            )
        return RewardResult([0.0 if t is None else t for t in totals], metrics, clusters)

    def score_baseline(
        self,
        inp: RewardInput,
        completion: str,
        completion_ids: list[int],
        weights: list[float] | None = None,
    ) -> float:
        """ReMax's greedy baseline: one more completion of `inp`'s prompt, weighted and summed
        like the group's (with the same live `weights`). A function that judges a completion
        by its group (ttrl's majority vote) scores it against the group; the others score it
        alone."""
        if weights is None or len(weights) != len(self.functions):
            weights = self.weights
        inp = replace(inp, completions=[cap_text(c, self.max_chars) for c in inp.completions])
        text = cap_text(completion, self.max_chars)
        one = replace(inp, completions=[text], completion_ids=[completion_ids])
        total = 0.0
        for fn, weight in zip(self.functions, weights):
            against = getattr(fn, "score_against_group", None)
            r = against(inp, text) if against is not None else fn(one).rewards[0]
            if r is not None:
                total += weight * r
        return total

    def close(self) -> None:
        for fn in self.functions:
            fn.close()


def dry_run(cfg: RewardConfig, row: dict, prompt_field: str) -> None:
    """Builds the reward and scores one empty completion of `row`, so a plug-in that does not
    import or a column a function needs but the data lacks fails before anything loads
    (for the launcher's checks). A group no function scored is fine here: an empty
    completion may well earn no reward."""
    prompt = row.get(prompt_field, "")
    fn = CombinedReward(cfg)
    try:
        fn(RewardInput(prompt, str(prompt), [""], [[]], row))
    except NoReward:
        pass
    finally:
        fn.close()

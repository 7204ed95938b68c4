"""Typed configuration of the reward stage (the `reward:` section of a run's YAML).

Kept apart from the implementations so that `launch/config.py` can import the schema without
pulling in torch, transformers or math-verify.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from asyncrl.protocol.settings import StrictModel


class OverlongConfig(StrictModel):
    """DAPO's soft overlong punishment (arXiv 2503.14476, eq. 13), added to the base reward.

    With `L_max = max_length` and `L_cache = cache_length`, a response of `n` tokens gets
    0 when `n <= L_max - L_cache`, `((L_max - L_cache) - n) / L_cache` inside the cache
    interval, and -1 beyond `L_max`.
    """

    enabled: bool = Field(False, description="Add the soft overlong penalty to the base reward.")
    max_length: int | None = Field(
        None,
        ge=1,
        description="L_max in response tokens; usually sampling.max_new_tokens. Required when "
        "enabled.",
    )
    cache_length: int | None = Field(
        None,
        ge=1,
        description="L_cache in response tokens: the penalty ramps linearly from 0 to -1 over "
        "the last L_cache tokens before L_max (DAPO uses 4096 of 20480). Required when enabled.",
    )

    @model_validator(mode="after")
    def _check(self) -> OverlongConfig:
        if self.enabled:
            if self.max_length is None or self.cache_length is None:
                raise ValueError(
                    "reward.overlong.enabled needs reward.overlong.max_length and "
                    "reward.overlong.cache_length"
                )
            if self.cache_length > self.max_length:
                raise ValueError(
                    f"reward.overlong.cache_length ({self.cache_length}) must not exceed "
                    f"reward.overlong.max_length ({self.max_length})"
                )
        return self


class TTRLConfig(StrictModel):
    """TTRL as published (arXiv 2504.16084): vote over N samples, train on G of them."""

    vote_size: int | None = Field(
        None,
        ge=2,
        le=1024,
        description="N: samples generated per prompt and voted on for the pseudo label (the "
        "paper votes over 64); the learner trains on sampling.group_size (G <= N) of them, "
        "chosen by `keep`. A lease then asks for N samples; the group still counts as one "
        "group for the gate and the buffer. Empty: vote over the G samples trained on.",
    )
    keep: Literal["random", "stratified"] = Field(
        "random",
        description="Which G of the N voted samples are trained on: random (uniform without "
        "replacement, as the paper) or stratified (each answer keeps its share of the N, "
        "largest remainders first, so the minority answers that carry the signal survive).",
    )


BUILTIN_REWARDS = ("exact", "math", "ttrl", "reward_model", "overlong")
# Built-ins that run none of the user's code and whose cost is linear in a completion that
# max_completion_chars bounds: a worker process would buy them nothing but a pipe round trip.
IN_THREAD_SAFE = ("exact", "overlong")
# Built-ins that compare with the row's ground truth: never shown a label at test time.
LABELLED_REWARDS = ("exact", "math")


class RewardConfig(StrictModel):
    """Which reward functions score a completed group, and their settings."""

    functions: list[str] | None = Field(
        None,
        description="Reward functions, summed with `weights` (as TRL's reward_funcs and "
        "reward_weights): built-ins (exact, math, ttrl, reward_model, overlong) and plug-ins "
        "'module:function' or 'path/to/file.py:function', called as TRL calls them: "
        "fn(prompts=, completions=, completion_ids=, **columns), each dataset column a list "
        "with one entry per completion, completions as message lists for chat prompts; None "
        "for a sample means no reward from that function. Empty: the single reward `name`.",
    )
    weights: list[float] | None = Field(
        None,
        description="One weight per entry of `functions`; empty: 1.0 each. A sample's reward "
        "is the weighted sum over the functions that scored it (None skipped); a sample no "
        "function scored gets 0, and a group no function scored fails (see "
        "max_consecutive_failures).",
    )
    name: Literal["exact", "math", "ttrl", "reward_model", "plugin"] = Field(
        "exact",
        description="The single reward used when `functions` is empty (ignored otherwise). "
        "exact: stripped completion equals the answer (tiny task). math: extracted final "
        "answer checked with math-verify. ttrl: label-free majority vote of the group "
        "(TTRL). reward_model: Hugging Face sequence-classification score. plugin: the "
        "function in `plugin`.",
    )
    answer_field: str = Field(
        "answer",
        description="Dataset column holding the ground-truth answer, for the built-ins (exact, "
        "math; ttrl reports pseudo-label accuracy with it) and evaluation accuracy (rows "
        "without it count in reward and pass@k only). Plug-ins get every column by name.",
    )
    plugin: str | None = Field(
        None,
        description="With name 'plugin': 'module:function' or 'path/to/file.py:function'; "
        "the same as functions: [that].",
    )
    max_completion_chars: int = Field(
        200_000,
        ge=1,
        description="Completion text longer than this is cut to its last max_completion_chars "
        "characters (where a final answer is) before any reward function sees it: bounds the "
        "work a hostile or runaway completion can cost.",
    )
    max_consecutive_failures: int = Field(
        50,
        ge=0,
        description="End the learner with an error (exit code 4) after this many groups in a "
        "row failed in the reward (raised, timed out, or no function scored any sample): a "
        "broken reward or a wrong answer column stops the run instead of dropping every group "
        "forever. 0 = never.",
    )
    reward_model_path: str | None = Field(
        None,
        description="Local directory of a Hugging Face sequence-classification model and its "
        "tokenizer (num_labels=1; logit 0 is the reward). Required when name is "
        "'reward_model'.",
    )
    reward_model_batch_size: int = Field(
        16, ge=1, description="Prompt+completion pairs per reward-model forward pass."
    )
    reward_model_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the reward model runs; auto = cuda if available."
    )
    reward_model_max_length: int | None = Field(
        None,
        ge=1,
        description="Truncate prompt+completion to this many tokens (from the left, keeping the "
        "completion's end). Empty: no truncation.",
    )
    overlong: OverlongConfig = Field(
        default_factory=OverlongConfig,
        description="DAPO soft overlong penalty added to the base reward.",
    )
    ttrl: TTRLConfig = Field(
        default_factory=TTRLConfig,
        description="Majority-vote settings of the ttrl reward (vote_size N, keep).",
    )
    workers: int = Field(
        2,
        ge=1,
        description="Worker processes scoring groups (each builds the reward once: a reward "
        "model is loaded once per worker); pool threads when groups are scored in threads "
        "(isolation). Rewards never run on the learner's socket loop or "
        "training thread; past 4 queued groups per worker, intake waits for a free worker.",
    )
    isolation: Literal["auto", "process", "thread"] = Field(
        "auto",
        description="Where groups are scored. process: in the worker processes, under the "
        "hard deadline. thread: on the pool's threads in the learner process, with no "
        "deadline (nothing can stop a thread), allowed only when every function is one of "
        f"{', '.join(IN_THREAD_SAFE)} (built-ins of bounded cost that run no user code); it "
        "saves each group a round trip to another process, CPU the training thread gets "
        "back when they share cores. auto: thread when that is allowed, process otherwise.",
    )
    timeout_seconds: float = Field(
        30.0,
        gt=0.0,
        description="Hard deadline on scoring one group (and its greedy baseline) in a worker "
        "process. A worker "
        "still running then is killed and replaced, and the group is dropped with reason "
        "reward_timeout (its prompt is not re-issued). Must cover a reward's first call "
        "(math starts its math-verify workers then).",
    )
    verify_timeout_seconds: float = Field(
        5.0,
        gt=0.0,
        description="Bound on answer verification for one group (math); checks still "
        "running then give reward 0 and count in reward_errors. Keep it below "
        "timeout_seconds.",
    )
    verify_workers: int = Field(
        2,
        ge=1,
        description="Worker processes running math-verify (math), per reward worker. Started "
        "on first use; plain-number answers are compared in-process without them.",
    )

    @model_validator(mode="after")
    def _check(self) -> RewardConfig:
        if self.functions is not None:
            if not self.functions:
                raise ValueError("reward.functions is empty: name at least one reward function")
            for spec in self.functions:
                if spec not in BUILTIN_REWARDS and ":" not in spec:
                    raise ValueError(
                        f"reward.functions entry {spec!r} is neither a built-in "
                        f"({', '.join(BUILTIN_REWARDS)}) nor 'module:function' / "
                        "'path/to/file.py:function'"
                    )
            if self.weights is not None and len(self.weights) != len(self.functions):
                raise ValueError(
                    f"reward.weights has {len(self.weights)} entries for "
                    f"{len(self.functions)} reward.functions; give one weight per function"
                )
        elif self.weights is not None:
            raise ValueError("reward.weights needs reward.functions (one weight per function)")
        if self.name == "plugin" and not self.plugin and self.functions is None:
            raise ValueError("reward.name is 'plugin': set reward.plugin to 'module:function'")
        if self.plugin and ":" not in self.plugin:
            raise ValueError(
                f"reward.plugin {self.plugin!r} must look like 'module:function', "
                "e.g. 'my_rewards:score'"
            )
        names = [spec for spec, _ in self.resolved()]
        if "reward_model" in names and not self.reward_model_path:
            raise ValueError(
                "reward function reward_model: set reward.reward_model_path to a local "
                "Hugging Face sequence-classification model directory"
            )
        if self.ttrl.vote_size is not None and "ttrl" not in names:
            raise ValueError(
                "reward.ttrl.vote_size needs the ttrl reward (reward.name: ttrl, or ttrl in "
                "reward.functions): only a vote uses the extra samples"
            )
        if self.isolation == "thread" and not self.in_thread_safe():
            raise ValueError(
                f"reward.isolation 'thread' is for {', '.join(IN_THREAD_SAFE)} only; "
                f"{', '.join(n for n in names if n not in IN_THREAD_SAFE)} must run in worker "
                "processes (reward.isolation: process or auto)"
            )
        if "overlong" in names and (
            self.overlong.max_length is None or self.overlong.cache_length is None
        ):
            raise ValueError(
                "reward function overlong: set reward.overlong.max_length and "
                "reward.overlong.cache_length"
            )
        return self

    def in_thread_safe(self) -> bool:
        """Whether every function may score on a pool thread (`IN_THREAD_SAFE`)."""
        return all(spec in IN_THREAD_SAFE for spec, _ in self.resolved())

    def scores_in_thread(self) -> bool:
        """Whether groups are scored on the pool's threads rather than in worker processes."""
        return self.isolation == "thread" or (self.isolation == "auto" and self.in_thread_safe())

    def resolved(self) -> list[tuple[str, float]]:
        """(function spec, weight) for every function that scores, in order."""
        if self.functions is not None:
            weights = self.weights or [1.0] * len(self.functions)
            out = list(zip(self.functions, weights))
        else:
            out = [(self.plugin if self.name == "plugin" else self.name, 1.0)]
        # The legacy switch: the DAPO penalty added with weight 1 unless listed already.
        if self.overlong.enabled and "overlong" not in [s for s, _ in out]:
            out.append(("overlong", 1.0))
        return out


def eval_reward_config(reward: RewardConfig, functions: list[str] | None) -> RewardConfig:
    """The reward that scores held-out completions: `functions` (weights 1) when given, else
    the training reward with a label-free `ttrl` scored as `math`. A vote over one greedy
    completion is always its own majority: scored by ttrl, every answer would count as
    solved."""
    if functions is None:
        specs = reward.resolved()
        if all(spec != "ttrl" for spec, _ in specs):
            return reward
        funcs = ["math" if spec == "ttrl" else spec for spec, _ in specs]
        weights: list[float] | None = [w for _, w in specs]
    else:
        funcs, weights = list(functions), None
    data = reward.model_dump()
    data.update(functions=funcs, weights=weights, ttrl=TTRLConfig().model_dump())
    return RewardConfig.model_validate(data)

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


class RewardConfig(StrictModel):
    """Which reward scores a completed group, and its settings."""

    name: Literal["exact", "math", "ttrl", "reward_model", "plugin"] = Field(
        "exact",
        description="exact: stripped completion equals the answer (tiny task). math: extracted "
        "final answer checked with math-verify. ttrl: label-free majority vote of the group "
        "(TTRL). reward_model: Hugging Face sequence-classification score. plugin: your "
        "function (see `plugin`).",
    )
    answer_field: str = Field(
        "answer",
        description="Dataset row field holding the ground-truth answer (exact, math; ttrl "
        "uses it only to report pseudo-label accuracy).",
    )
    plugin: str | None = Field(
        None,
        description="'module:function' called as fn(prompts, completions, **row) -> list of "
        "floats, one per completion. Required when name is 'plugin'.",
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
    workers: int = Field(
        2,
        ge=1,
        description="Worker processes scoring groups (each builds the reward once: a reward "
        "model is loaded once per worker). Rewards never run on the learner's socket loop or "
        "training thread; past 4 queued groups per worker, intake waits for a free worker.",
    )
    timeout_seconds: float = Field(
        30.0,
        gt=0.0,
        description="Hard deadline on scoring one group (and its greedy baseline). A worker "
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
        if self.name == "plugin" and not self.plugin:
            raise ValueError("reward.name is 'plugin': set reward.plugin to 'module:function'")
        if self.plugin and ":" not in self.plugin:
            raise ValueError(
                f"reward.plugin {self.plugin!r} must look like 'module:function', "
                "e.g. 'my_rewards:score'"
            )
        if self.name == "reward_model" and not self.reward_model_path:
            raise ValueError(
                "reward.name is 'reward_model': set reward.reward_model_path to a local "
                "Hugging Face sequence-classification model directory"
            )
        return self

"""Typed settings of the learned critic (the `critic:` section), used when
`advantage.name` is `gae`. Kept apart from `learner.critic` so that a config validates without
importing torch."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from asyncrl.protocol.settings import StrictModel


class CriticConfig(StrictModel):
    """The value model: a transformer with a scalar head, trained on the learner as its own
    DeepSpeed engine (own optimizer, LR and ZeRO stage) next to the policy."""

    init: Literal["policy", "reward_model", "path"] = Field(
        "policy",
        description="Where the critic's weights come from. policy: the policy's transformer "
        "(the run's model) with a fresh scalar head. reward_model: a Hugging Face "
        "sequence-classification model at `path` (its backbone and scalar head). path: a "
        "critic exported by an earlier run (export/critic) or any model at `path`.",
    )
    path: str | None = Field(
        None, description="Model directory for init=reward_model or init=path."
    )
    lr: float = Field(
        1e-5,
        gt=0.0,
        description="Critic's peak learning rate; critics usually take a larger one than the "
        "policy.",
    )
    zero_stage: int | None = Field(
        None,
        ge=0,
        le=3,
        description="Critic's DeepSpeed ZeRO stage; empty = train.zero_stage. Stage 3 only "
        "together with a policy at stage 3 (transformers' ZeRO-3 loading is process-wide).",
    )
    optimizer: Literal["adamw", "sgd"] = Field(
        "adamw", description="adamw, or plain sgd (tests comparing gradients across layouts)."
    )
    weight_decay: float = Field(0.0, ge=0.0, description="Critic's AdamW weight decay.")
    warmup_steps: int = Field(0, ge=0, description="Critic's linear LR warmup steps.")
    grad_clip: float = Field(1.0, ge=0.0, description="Critic's gradient norm clip; 0 = off.")
    epochs: int | None = Field(
        None,
        ge=1,
        description="Critic's passes over each batch (each pass = train.mini_batches optimizer "
        "steps); empty = train.ppo_epochs. A fresh head may need more than the policy.",
    )
    value_clip: float = Field(
        0.2,
        ge=0.0,
        description="Clipped value loss: the new value may move at most this far from the "
        "value at the step's start, max((V-R)², (V_clip-R)²); 0 = unclipped (V-R)².",
    )
    coef: float = Field(
        1.0,
        gt=0.0,
        description="Weight of the value loss ½·max(...) (token mean) in the critic's objective.",
    )
    pretrain_steps: int = Field(
        0,
        ge=0,
        description="The first N learner steps train only the critic (VAPO value pre-training); "
        "the policy's weights stay put but versions advance, so the gate keeps issuing work.",
    )
    deepspeed: dict[str, Any] = Field(
        default_factory=dict,
        description="Raw DeepSpeed config merged over the critic's generated one.",
    )

    @model_validator(mode="after")
    def _check(self) -> CriticConfig:
        if self.init != "policy" and not self.path:
            raise ValueError(f"critic.init is {self.init!r}: set critic.path to the model")
        return self

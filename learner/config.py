"""The learner's configuration sections, and the shape of the whole run it reads.

The launch layer composes these into its run config (`AsyncRLConfig`); the learner never
imports launch, so what it reads of the sections it does not own is declared here as
`RunConfig`, a protocol the composed config satisfies structurally.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Protocol

from pydantic import Field, model_validator

from asyncrl.buffer.config import BufferConfig
from asyncrl.learner.critic_config import CriticConfig
from asyncrl.learner.loss_config import AdvantageConfig, ObjectiveConfig
from asyncrl.learner.rewards import RewardConfig
from asyncrl.learner.rewards.config import BUILTIN_REWARDS
from asyncrl.protocol.blob import MAX_WEIGHT_CHUNK_BYTES
from asyncrl.protocol.settings import (
    MetricsHttpSettings,
    ModelConfig,
    SamplingConfig,
    SecurityConfig,
    StrictModel,
)


class DataConfig(StrictModel):
    train_path: str | None = Field(
        None,
        description="Prompt dataset for RL: JSONL file with one object per line. Empty: "
        "the embedded tiny task's train split.",
    )
    eval_path: str | None = Field(
        None,
        description="Held-out JSONL for greedy accuracy. Empty: the tiny task's split, "
        "or no evaluation when train_path is set without eval_path.",
    )
    prompt_field: str = Field("prompt", description="Row field holding the prompt text.")
    eval_size: int = Field(256, ge=1, description="At most this many held-out rows are scored.")
    shuffle_seed: int = Field(0, description="Seed of the per-epoch prompt order.")
    test_time: bool = Field(
        False,
        description="Test-time RL (TTRL): train on the evaluation prompts themselves (the first "
        "eval_size rows of eval_path, or the tiny task's held-out split) instead of "
        "train_path, without their labels: the reward functions never see "
        "reward.answer_field (only label-free rewards may train; the label feeds metrics "
        "such as ttrl_label_accuracy). Accuracy is then reported on those same prompts.",
    )

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return _refuse_moved(data, "data", {"answer_field": "reward.answer_field"})


def _refuse_moved(data: Any, section: str, moved: dict[str, str]) -> Any:
    """A clear error for a setting that moved, instead of "unknown key"."""
    if isinstance(data, dict):
        for old, new in moved.items():
            if old in data:
                raise ValueError(f"{section}.{old} moved to {new}; set that instead")
    return data


class EvalConfig(StrictModel):
    """Held-out evaluation, scored with the training reward (`reward.functions`) unless
    `functions` says otherwise."""

    every: int = Field(
        20, ge=0, description="Held-out evaluation every N steps; 0 = only before and after."
    )
    deferred: bool = Field(
        False,
        description="Take a CPU copy of the policy every `every` steps instead of evaluating "
        "there, and evaluate the copies once the last step is done, each recorded at its step "
        "with `rl_elapsed_seconds` (the loop's wall time when it was taken): accuracy against "
        "wall time with the loop never paused (a pause lets generators run ahead at η > 0). "
        "Holds one copy of the weights per evaluation in memory (refused at start past half "
        "the memory available): meant for small models and "
        "`asyncrl bench --only learning`. One learner rank, ZeRO stage 0-2; a run stopped "
        "by a signal skips them.",
    )
    samples: int = Field(
        1,
        ge=1,
        description="Completions per held-out prompt (k of pass@k). 1 = one greedy completion; "
        "more are sampled at eval.temperature.",
    )
    temperature: float = Field(
        1.0, gt=0.0, description="Sampling temperature when eval.samples > 1."
    )
    functions: list[str] | None = Field(
        None,
        description="Reward functions scoring held-out completions (weights 1), as "
        "reward.functions. Empty: the training reward, with a label-free ttrl scored as math "
        "(the answer against the label; a vote over one completion always agrees with itself).",
    )
    success_threshold: float = Field(
        1.0,
        description="A completion counts as solved (accuracy, pass@k) when its reward, the "
        "weighted sum of reward.functions, reaches this.",
    )

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        if self.functions is not None:
            if not self.functions:
                raise ValueError("eval.functions is empty: name a function, or leave it unset")
            for spec in self.functions:
                if spec == "ttrl":
                    raise ValueError(
                        "eval.functions: ttrl scores agreement with a vote, not accuracy; "
                        "use math or exact (the label)"
                    )
                if spec not in BUILTIN_REWARDS and ":" not in spec:
                    raise ValueError(
                        f"eval.functions entry {spec!r} is neither a built-in "
                        f"({', '.join(BUILTIN_REWARDS)}) nor 'module:function'"
                    )
        return self


class TrainConfig(StrictModel):
    groups_per_step: int = Field(8, ge=1, description="Prompt groups per optimizer step (B).")
    steps: int = Field(
        120, ge=1, description="Optimizer steps to run (this process's target policy version)."
    )
    max_seconds: float = Field(
        0.0, ge=0.0, description="Stop after this much RL wall time; 0 = no limit."
    )
    lr: float = Field(
        1e-6, gt=0.0, description="Peak learning rate (AdamW); 1e-6 suits 0.5-8B models."
    )
    lr_multiplier: float = Field(
        1.0,
        gt=0.0,
        le=100.0,
        description="Multiplies train.lr and its warmup schedule from the next step on; "
        "meant to be changed on a live run (`asyncrl ctl set train.lr_multiplier=0.5`).",
    )
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    warmup_steps: int = Field(5, ge=0, description="Linear LR warmup steps.")
    grad_clip: float = Field(1.0, ge=0.0, description="Gradient norm clip; 0 = off.")
    micro_batch_size: int = Field(
        4,
        ge=1,
        description="Sequences per forward/backward pass (per rank); raise it while memory allows.",
    )
    token_balanced: bool = Field(
        True,
        description="Pack micro-batches by token count (longest rows first into the "
        "lightest micro-batch) instead of consecutive rows; each is trimmed to its own longest "
        "row. Same gradient either way (token-mean); less padding and a flatter memory peak.",
    )
    pack_sequences: bool = Field(
        True,
        description="Lay several sequences of a micro-batch end to end in one row, each with "
        "its own position ids and attention confined to itself, so forward passes compute no "
        "padding; same log-probs, loss and gradients as padded rows. Checked once against the "
        "model (a model whose attention ignores per-sequence position ids gets trimmed rows).",
    )
    pack_row_tokens: int = Field(
        0,
        ge=0,
        description="Widest packed row in positions (never fewer than the longest sequence): "
        "of every row count that width allows, the one with the least filler, each count's "
        "rows balanced. 0 = rows up to 4 times the longest sequence of the micro-batch, the "
        "row count a FLOP estimate from the model's size says is cheapest: more rows can leave "
        "less filler, but where attention is a masked dense product (sdpa, eager, flex) every "
        "token pays for its whole row; flash-attention varlen does not.",
    )
    mini_batches: int = Field(
        1,
        ge=1,
        description="Optimizer steps per batch: the batch is split into this many mini-batches "
        "(PPO-style). More than one step per batch makes the learner score π_prox first.",
    )
    ppo_epochs: int = Field(
        1, ge=1, description="Passes over each batch (each pass = mini_batches optimizer steps)."
    )
    optimizer: Literal["adamw", "sgd"] = Field(
        "adamw",
        description="adamw (default) or plain sgd (makes parameter updates proportional to "
        "gradients: used by tests that compare gradients across layouts).",
    )
    zero_stage: int = Field(0, ge=0, le=3, description="DeepSpeed ZeRO stage (0-3).")
    seed: int = Field(0, description="Seed of learner RNGs.")
    log_every: int = Field(5, ge=1, description="Progress line every N steps.")
    publish_every: int = Field(1, ge=1, description="Publish weights every N steps.")
    checkpoint_every: int = Field(
        0,
        ge=0,
        description="Save a checkpoint every N steps (and always on SIGTERM and at the "
        "end); 0 = only on SIGTERM and at the end.",
    )
    keep_checkpoints: int = Field(
        2,
        ge=1,
        description="Complete checkpoints kept under learner.output_dir/checkpoint (newest "
        "first); older ones are deleted only after a newer one is complete. 2 keeps one "
        "fallback should the newest turn out unusable.",
    )
    export_checkpoints: bool = Field(
        True,
        description="Also write a Hugging Face export of every checkpoint to "
        "learner.output_dir/export/<tag>, kept and pruned with its checkpoint; false = "
        "only the final export (learner.output_dir/export).",
    )
    threads: int = Field(
        0, ge=0, description="torch intra-op threads for the learner; 0 = leave torch's default."
    )
    deepspeed: dict[str, Any] = Field(
        default_factory=dict,
        description="Raw DeepSpeed config merged over the generated one, "
        "for anything not modelled here.",
    )

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return _refuse_moved(data, "train", {"eval_every": "eval.every"})


# Weight transports: one member per file in `learner/publishers/` (registered there by `type`).
# With every transport the chunks stay available over the control socket, as the fallback and
# for hf generators.
class ZmqWeights(StrictModel):
    type: Literal["zmq"] = Field(
        "zmq",
        description="zmq: generators fetch chunks over the control socket while the version "
        "is written.",
    )


class DiskWeights(StrictModel):
    type: Literal["disk"] = Field(
        "disk",
        description="disk: each version is also written to `dir` and generators load it from "
        "there (SGLang: /update_weights_from_disk).",
    )
    dir: str = Field(
        description="Shared directory the versions are written to (same path on every host)."
    )


class NcclWeights(StrictModel):
    type: Literal["nccl"] = Field(
        "nccl",
        description="nccl: SGLang generators have their server join a weight-update group with "
        "the learner and receive each version as bucketed broadcasts "
        "(/update_weights_from_distributed; SGLang >= 0.5.6).",
    )
    host: str | None = Field(
        None,
        description="The learner's address as the SGLang servers reach it (the group "
        "rendezvous listens there). Empty: learner.bind_host, or this host's name when "
        "bind_host is 0.0.0.0.",
    )
    bucket_bytes: int = Field(
        256 << 20,
        ge=1 << 20,
        description="Most bytes per broadcast (and per learner GPU staging buffer); a larger "
        "tensor gets a bucket of its own.",
    )
    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto",
        description="The weight-update group's collective backend. auto: nccl when the learner "
        "runs on CUDA, else gloo. gloo also serves a learner and a server that share one GPU "
        "(NCCL refuses two ranks on one device), at host-copy speed.",
    )
    timeout_seconds: float = Field(
        300.0,
        gt=0,
        description="How long a group may take to form and one bucket to broadcast before the "
        "generator's group is given up (it can join again).",
    )


WeightsTransport = Annotated[ZmqWeights | DiskWeights | NcclWeights, Field(discriminator="type")]


class LearnerConfig(MetricsHttpSettings):
    bind_host: str = Field(
        "127.0.0.1", description="Interface the learner binds (0.0.0.0 for a fleet on other hosts)."
    )
    control_port: int = Field(
        5555, ge=0, le=65535, description="ROUTER port: leases, heartbeats, weight chunks."
    )
    rollouts_port: int = Field(5556, ge=0, le=65535, description="PULL port: rollout groups.")
    weights_port: int = Field(5557, ge=0, le=65535, description="PUB port: weight announcements.")
    metrics_port: int = Field(
        9400, ge=0, le=65535, description="Prometheus /metrics port; 0 = any free port."
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="Interface /metrics and /healthz bind, independent of bind_host (0.0.0.0 "
        "to scrape from another host; then consider metrics_auth_file and TLS).",
    )
    metrics_linger_seconds: float = Field(
        30.0,
        ge=0,
        description="After a normal finish, keep serving /metrics this long (asyncrl_run_finished "
        "= 1) so Prometheus scrapes it and the down alerts stay quiet; at least one scrape "
        "interval. SIGTERM ends it early.",
    )
    health_stall_seconds: float = Field(
        600.0,
        gt=0,
        description="/healthz answers 503 when no group was accepted for this long while "
        "generators are connected and the trainer waits for groups, or no step was taken for "
        "this long while a batch's worth of groups waits. Above the longest evaluation or "
        "checkpoint save.",
    )
    output_dir: str = Field("runs/latest", description="Where summaries and checkpoints go.")
    weight_chunk_bytes: int = Field(
        4 << 20,
        ge=1024,
        le=MAX_WEIGHT_CHUNK_BYTES,
        description="Size of one weight chunk (every transport: chunks stay available). At most "
        "32 MiB (MAX_WEIGHT_CHUNK_BYTES): glibc maps larger blocks afresh for every received "
        "chunk.",
    )
    min_logprob: float = Field(
        -1e4,
        lt=0,
        description="Floor on the behaviour logprob of every returned token; a group with a "
        "lower one is dropped as bad_logprobs (such values only come from corrupt engines or "
        "forged groups and would blow up importance ratios).",
    )
    ctl_allow_remote: bool = Field(
        False,
        description="Without CURVE, accept `asyncrl ctl` from any address, not only loopback "
        "(trusted networks only). Under CURVE only operator keys (`asyncrl keys --operators`) "
        "may tune, from anywhere.",
    )
    audit_log: bool = Field(
        False,
        description="Append every group's fate (accepted, dropped, trained) and each checkpoint "
        "to output_dir/audit.jsonl, across crashes and resumes; `asyncrl audit DIR` checks that "
        "no group was trained twice and none accepted was lost. One line per group.",
    )
    report_to: list[Literal["jsonl", "tensorboard", "wandb"]] = Field(
        default_factory=lambda: ["jsonl"],
        description="Experiment trackers that receive every per-step statistic (rank 0): "
        "jsonl (output_dir/metrics.jsonl, one object per step), tensorboard (event files in "
        "output_dir/tensorboard; needs the `tensorboard` extra), wandb (offline unless "
        "WANDB_MODE says otherwise, files in output_dir/wandb; needs the `wandb` extra). "
        "Prometheus gauges get the same statistics whatever this lists.",
    )
    wandb_project: str = Field(
        "asyncrl", description="W&B project name when report_to lists wandb."
    )
    weights: WeightsTransport = Field(
        default_factory=ZmqWeights,
        description="How versions reach the generators besides chunks: {type: zmq} (default), "
        "{type: disk, dir: ...} or {type: nccl, host, bucket_bytes, backend, timeout_seconds}.",
    )


class RunConfig(Protocol):
    """The run as the learner sees it; the hub reads the same object. The launch layer's
    composed config satisfies it structurally (the learner never imports launch)."""

    @property
    def model(self) -> ModelConfig: ...
    @property
    def data(self) -> DataConfig: ...
    @property
    def sampling(self) -> SamplingConfig: ...
    @property
    def objective(self) -> ObjectiveConfig: ...
    @property
    def advantage(self) -> AdvantageConfig: ...
    @property
    def critic(self) -> CriticConfig: ...
    @property
    def reward(self) -> RewardConfig: ...
    @property
    def eval(self) -> EvalConfig: ...
    @property
    def train(self) -> TrainConfig: ...
    @property
    def buffer(self) -> BufferConfig: ...
    @property
    def learner(self) -> LearnerConfig: ...
    @property
    def security(self) -> SecurityConfig: ...

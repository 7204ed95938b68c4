"""The typed configuration schema shared by every role, with YAML loading and dotted overrides.

One file configures a whole run (learner, generators, local launcher): operators keep one YAML
per experiment and override fields per host on the command line, e.g.
`asyncrl learner --config run.yaml train.steps=500 buffer.max_staleness=4`.
Unknown keys and bad values fail at start with a message naming the field and what to change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from asyncrl.buffer.config import BufferConfig
from asyncrl.generators.config import GeneratorConfig
from asyncrl.launch.tiny import TinyTaskConfig
from asyncrl.learner.loss_config import AdvantageConfig, ObjectiveConfig
from asyncrl.learner.rewards import RewardConfig
from asyncrl.protocol.settings import ModelConfig, SamplingConfig, SecurityConfig
from asyncrl.protocol.settings import StrictModel as _Strict

PRESETS_DIR = Path(__file__).parent / "presets"
# Largest `learner.weight_chunk_bytes`: glibc's largest heap block on 64-bit; larger ones are
# mapped afresh for every received chunk (see generators.weights.keep_chunk_memory).
MAX_WEIGHT_CHUNK_BYTES = 32 << 20


class DataConfig(_Strict):
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
    answer_field: str = Field("answer", description="Row field holding the ground truth.")
    eval_size: int = Field(256, ge=1, description="At most this many held-out rows are scored.")
    shuffle_seed: int = Field(0, description="Seed of the per-epoch prompt order.")


class TrainConfig(_Strict):
    groups_per_step: int = Field(8, ge=1, description="Prompt groups per optimizer step (B).")
    steps: int = Field(
        120, ge=1, description="Optimizer steps to run (this process's target policy version)."
    )
    max_seconds: float = Field(
        0.0, ge=0.0, description="Stop after this much RL wall time; 0 = no limit."
    )
    lr: float = Field(2e-4, gt=0.0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    warmup_steps: int = Field(5, ge=0, description="Linear LR warmup steps.")
    grad_clip: float = Field(1.0, ge=0.0, description="Gradient norm clip; 0 = off.")
    micro_batch_size: int = Field(64, ge=1, description="Sequences per forward/backward pass.")
    token_balanced: bool = Field(
        True,
        description="Pack micro-batches by token count (longest rows first into the "
        "lightest micro-batch) instead of consecutive rows; each is trimmed to its own longest "
        "row. Same gradient either way (token-mean); less padding and a flatter memory peak.",
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
    eval_every: int = Field(
        20, ge=0, description="Held-out evaluation every N steps; 0 = only before and after."
    )
    log_every: int = Field(5, ge=1, description="Progress line every N steps.")
    publish_every: int = Field(1, ge=1, description="Publish weights every N steps.")
    checkpoint_every: int = Field(
        0,
        ge=0,
        description="Save a checkpoint every N steps (and always on SIGTERM and at the "
        "end); 0 = only on SIGTERM and at the end.",
    )
    threads: int = Field(
        0, ge=0, description="torch intra-op threads for the learner; 0 = leave torch's default."
    )
    deepspeed: dict[str, Any] = Field(
        default_factory=dict,
        description="Raw DeepSpeed config merged over the generated one, "
        "for anything not modelled here.",
    )


class LearnerConfig(_Strict):
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
    output_dir: str = Field("runs/latest", description="Where summaries and checkpoints go.")
    weight_chunk_bytes: int = Field(
        4 << 20,
        ge=1024,
        le=MAX_WEIGHT_CHUNK_BYTES,
        description="Size of one weight chunk. At most 32 MiB (MAX_WEIGHT_CHUNK_BYTES): glibc "
        "maps larger blocks afresh for every received chunk.",
    )
    weights_transport: Literal["zmq", "disk", "nccl"] = Field(
        "zmq",
        description="zmq: generators fetch chunks over the control socket. disk: each version is "
        "also written to learner.weights_dir (shared storage) and generators load it from "
        "there (SGLang: /update_weights_from_disk). nccl: SGLang generators have their server "
        "join a weight-update group with the learner and receive each version as bucketed "
        "broadcasts (/update_weights_from_distributed; SGLang >= 0.5.6). Chunks stay available "
        "as the fallback (and for hf generators) with every transport.",
    )
    nccl_host: str | None = Field(
        None,
        description="nccl transport: the learner's address as the SGLang servers reach it (the "
        "group rendezvous listens there). Empty: bind_host, or this host's name when bind_host "
        "is 0.0.0.0.",
    )
    nccl_bucket_bytes: int = Field(
        256 << 20,
        ge=1 << 20,
        description="nccl transport: most bytes per broadcast (and per learner GPU staging "
        "buffer); a larger tensor gets a bucket of its own.",
    )
    nccl_backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto",
        description="nccl transport: the weight-update group's collective backend. auto: nccl "
        "when the learner runs on CUDA, else gloo. gloo also serves a learner and a server that "
        "share one GPU (NCCL refuses two ranks on one device), at host-copy speed.",
    )
    nccl_timeout_seconds: float = Field(
        300.0,
        gt=0,
        description="nccl transport: how long a group may take to form and one bucket to "
        "broadcast before the generator's group is given up (it can join again).",
    )
    weights_dir: str | None = Field(
        None,
        description="Shared directory for the disk transport (same path on every host).",
    )


class LocalConfig(_Strict):
    generators: int = Field(2, ge=1, description="Generator processes `asyncrl local` starts.")
    pin_cores: bool = Field(
        False,
        description="Pin the learner and each generator to separate CPU cores when enough exist.",
    )


class AsyncRLConfig(_Strict):
    """A whole run: every role reads the sections it needs."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    tiny: TinyTaskConfig = Field(default_factory=TinyTaskConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    advantage: AdvantageConfig = Field(default_factory=AdvantageConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    buffer: BufferConfig = Field(default_factory=BufferConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    local: LocalConfig = Field(default_factory=LocalConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)

    @model_validator(mode="after")
    def _cross_field(self) -> AsyncRLConfig:
        if self.data.train_path is None and self.model.path is not None:
            raise ValueError(
                "model.path is set but data.train_path is not: the embedded tiny "
                "task only fits the embedded model; set data.train_path"
            )
        if self.learner.weights_transport == "disk" and not self.learner.weights_dir:
            raise ValueError(
                "learner.weights_transport is 'disk': set learner.weights_dir to a directory "
                "every generator can read"
            )
        sequences = self.train.groups_per_step * self.sampling.group_size
        if self.train.mini_batches > sequences:
            raise ValueError(
                f"train.mini_batches ({self.train.mini_batches}) exceeds the sequences per batch "
                f"(train.groups_per_step x sampling.group_size = {sequences}); lower it"
            )
        if (
            self.reward.overlong.enabled
            and (self.reward.overlong.max_length or 0) > self.sampling.max_new_tokens
        ):
            raise ValueError(
                "reward.overlong.max_length exceeds sampling.max_new_tokens: responses are cut "
                "before the penalty reaches -1; set it to sampling.max_new_tokens or less"
            )
        return self


class ConfigError(ValueError):
    """Configuration that cannot start a run; the message says what to change."""


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {dotted}: {k} is not a section")
        node = nxt
    node[keys[-1]] = value


def parse_overrides(items: list[str]) -> dict:
    """`a.b=1 c=x` -> nested dict; values parsed as YAML scalars (so 1, true, [1,2] work)."""
    tree: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.field=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw != "" else "")
    return tree


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_config_path(name_or_path: str | None) -> Path | None:
    """A path, or the name of a shipped preset (`tiny-cpu`)."""
    if not name_or_path:
        return None
    p = Path(name_or_path)
    if p.exists():
        return p
    preset = PRESETS_DIR / f"{name_or_path}.yaml"
    if preset.exists():
        return preset
    names = ", ".join(sorted(q.stem for q in PRESETS_DIR.glob("*.yaml")))
    raise ConfigError(f"config {name_or_path!r} is neither a file nor a preset ({names})")


def load_config(path: str | None = None, overrides: list[str] | None = None) -> AsyncRLConfig:
    """Load YAML (or a preset name), apply dotted overrides, validate."""
    tree: dict = {}
    resolved = resolve_config_path(path)
    if resolved is not None:
        loaded = yaml.safe_load(resolved.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{resolved}: the top level must be a mapping of sections")
        tree = loaded
    tree = _merge(tree, parse_overrides(overrides or []))
    try:
        return AsyncRLConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, resolved)) from None


def format_validation_error(exc: ValidationError, source: Path | None) -> str:
    lines = [f"invalid configuration{f' in {source}' if source else ''}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(
                f"  {loc}: unknown key; remove it or check the spelling "
                "(`asyncrl learner --print-config` lists every field)"
            )
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  {loc}: {err['msg']}{shown}")
    return "\n".join(lines)


def dump_config(cfg: AsyncRLConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def describe_fields(model: type[BaseModel] = AsyncRLConfig, prefix: str = "") -> list[str]:
    """One line per field: dotted name, default, description (for docs and --help-config)."""
    out = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.extend(describe_fields(ann, f"{prefix}{name}."))
        else:
            out.append(
                f"{prefix}{name} = {f.get_default(call_default_factory=True)!r}: "
                f"{f.description or ''}"
            )
    return out

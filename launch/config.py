"""The typed configuration schema shared by every role, with YAML loading and dotted overrides.

One file configures a whole run (learner, generators, local launcher): operators keep one YAML
per experiment and override fields per host on the command line, e.g.
`asyncrl learner --config run.yaml train.steps=500 buffer.max_staleness=4`.
Unknown keys and bad values fail at start with a message naming the field and what to change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from asyncrl.buffer.config import BufferConfig
from asyncrl.generators.config import GeneratorConfig
from asyncrl.generators.envs.config import EnvConfig
from asyncrl.launch.config_errors import format_validation_error, yaml_error_line
from asyncrl.launch.tiny import TinyTaskConfig
from asyncrl.learner.config import DataConfig, EvalConfig, LearnerConfig, TrainConfig
from asyncrl.learner.critic_config import CriticConfig
from asyncrl.learner.loop_defaults import apply_loop_defaults
from asyncrl.learner.loss_config import AdvantageConfig, ObjectiveConfig
from asyncrl.learner.rewards import RewardConfig
from asyncrl.learner.rewards.config import LABELLED_REWARDS
from asyncrl.protocol.settings import ModelConfig, SamplingConfig, SecurityConfig
from asyncrl.protocol.settings import StrictModel as _Strict

PRESETS_DIR = Path(__file__).parent / "presets"


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
    critic: CriticConfig = Field(default_factory=CriticConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    buffer: BufferConfig = Field(default_factory=BufferConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    env: EnvConfig = Field(default_factory=EnvConfig)
    local: LocalConfig = Field(default_factory=LocalConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)

    @model_validator(mode="after")
    def _cross_field(self) -> AsyncRLConfig:
        if self.data.test_time:
            _check_test_time(self)
        elif self.data.train_path is None and self.model.path is not None:
            raise ValueError(
                "model.path is set but data.train_path is not: the embedded tiny "
                "task only fits the embedded model; set data.train_path"
            )
        sequences = self.train.groups_per_step * self.sampling.group_size
        apply_loop_defaults(self.objective, self.train, sequences)
        if self.train.mini_batches > sequences:
            raise ValueError(
                f"train.mini_batches ({self.train.mini_batches}) exceeds the sequences per batch "
                f"(train.groups_per_step x sampling.group_size = {sequences}); lower it"
            )
        vote = self.reward.ttrl.vote_size
        if vote is not None and vote < self.sampling.group_size:
            raise ValueError(
                f"reward.ttrl.vote_size ({vote}) is below sampling.group_size "
                f"({self.sampling.group_size}): the learner trains on G of the N voted samples"
            )
        if (
            self.reward.overlong.enabled
            and (self.reward.overlong.max_length or 0) > self.sampling.max_new_tokens
        ):
            raise ValueError(
                "reward.overlong.max_length exceeds sampling.max_new_tokens: responses are cut "
                "before the penalty reaches -1; set it to sampling.max_new_tokens or less"
            )
        if self.advantage.name == "gae":
            if self.critic.pretrain_steps >= self.train.steps:
                raise ValueError(
                    f"critic.pretrain_steps ({self.critic.pretrain_steps}) leaves no step of "
                    f"train.steps ({self.train.steps}) to train the policy; lower it"
                )
            stage = self.critic.zero_stage
            if stage is not None and (stage == 3) != (self.train.zero_stage == 3):
                raise ValueError(
                    f"critic.zero_stage ({stage}) and train.zero_stage "
                    f"({self.train.zero_stage}): ZeRO-3 must be used by both or neither "
                    "(transformers builds ZeRO-3 models process-wide); leave critic.zero_stage "
                    "empty to follow train.zero_stage"
                )
        return self


def _check_test_time(cfg: AsyncRLConfig) -> None:
    """Test-time RL trains on the evaluation prompts, label-free."""
    labelled = [s for s, _ in cfg.reward.resolved() if s in LABELLED_REWARDS]
    if labelled:
        raise ValueError(
            f"data.test_time trains without labels, but reward {', '.join(labelled)} compares "
            "with the label; use a label-free reward (reward.name: ttrl)"
        )
    if cfg.data.train_path is not None:
        raise ValueError(
            "data.test_time trains on data.eval_path's prompts; leave data.train_path empty"
        )
    if cfg.model.path is not None and cfg.data.eval_path is None:
        raise ValueError(
            "data.test_time needs data.eval_path: the prompts to train and evaluate on"
        )


class ConfigError(ValueError):
    """Configuration that cannot start a run; the message says what to change."""


def _set_dotted(tree: dict, dotted: str, value: Any, item: str) -> None:
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"override {item}: empty name in {dotted!r}")
    node = tree
    for k in keys[:-1]:
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {item}: {k} is not a section")
        node = nxt
    node[keys[-1]] = value


def parse_overrides(items: list[str]) -> dict:
    """`a.b=1 c=x` -> nested dict; values parsed as YAML scalars (so 1, true, [1,2] work)."""
    tree: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.field=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or "not valid YAML"
            raise ConfigError(f"override {item}: the value is not valid YAML ({problem})") from None
        _set_dotted(tree, key.strip(), value, item)
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
    """Load YAML (or a preset name), apply dotted overrides, validate. A ConfigError has one
    line per problem, each saying where: `file:line:col:` or `override KEY=VALUE:`."""
    tree: dict = {}
    text = ""
    resolved = resolve_config_path(path)
    if resolved is not None:
        try:
            text = resolved.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{resolved}: cannot read the config ({e})") from None
        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(yaml_error_line(resolved, e)) from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{resolved}:1:1: the top level must be a mapping of sections")
        tree = loaded
    items = overrides or []
    tree = _merge(tree, parse_overrides(items))
    try:
        return AsyncRLConfig.model_validate(tree)
    except ValidationError as exc:
        keyed = [(i.split("=", 1)[0].strip(), i) for i in items]
        lines = format_validation_error(exc, AsyncRLConfig, resolved, text, keyed)
        raise ConfigError("\n".join(lines)) from None


def dump_config(cfg: AsyncRLConfig) -> str:
    tree = cfg.model_dump(mode="json")
    if cfg.model.path is not None and cfg.tiny == TinyTaskConfig():
        del tree["tiny"]  # only the embedded model reads it: noise in a real model's config
    return yaml.safe_dump(tree, sort_keys=False)


def field_rows(model: type[BaseModel] = AsyncRLConfig, prefix: str = "") -> list[tuple]:
    """(dotted name, default, description) of every field. A `type`-tagged union of sections
    lists every member's fields (its `type` line first); a required field's default is
    `(required)`."""
    out = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        sections = [a for a in (get_args(ann) or (ann,)) if isinstance(a, type)]
        if sections and all(issubclass(a, BaseModel) for a in sections):
            for section in sections:
                out.extend(field_rows(section, f"{prefix}{name}."))
        else:
            default = "(required)"
            if not f.is_required():
                default = repr(f.get_default(call_default_factory=True))
            out.append((f"{prefix}{name}", default, f.description or ""))
    return out


def describe_fields() -> list[str]:
    """One line per field: dotted name, default, description (`asyncrl config-fields`)."""
    return [f"{name} = {default}: {text}" for name, default, text in field_rows()]


def reference_markdown() -> str:
    """The configuration reference (docs/config.md): one table per section."""
    out = [
        "# Configuration reference",
        "",
        "Generated by `asyncrl config-fields --markdown`; `tests/unit/test_config.py` checks that",
        "this file matches the schema. Every field can be set in the YAML file or overridden on",
        "the command line as `section.field=value`. A `type`-tagged union (`learner.weights`)",
        "lists each member's fields after its `type` row.",
    ]
    section = None
    for name, default, text in field_rows():
        top = name.split(".", 1)[0]
        if top != section:
            section = top
            out += ["", f"## {top}", "", "| field | default | description |", "|---|---|---|"]
        cell = text.replace("|", "\\|")
        out.append(f"| `{name}` | `{default}` | {cell} |")
    return "\n".join(out) + "\n"

"""Configuration errors as one line each, saying where: `override train.lr=abc: ...` for a
command-line override, `run.yaml:7:3: ...` for a key of the file, with a "did you mean" for
unknown keys (the schema's own fields, and the names TRL and verl users bring with them) and a
hint when a familiar algorithm name is given where this schema splits it in two.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

# Names from TRL's GRPOConfig (flat keys, matched wherever they appear) and from verl's Hydra
# layout (full dotted paths), mapped to the field that does the same job here. A target that
# is not a field name is shown as a hint.
TRL_ALIASES = {
    "learning_rate": "train.lr",
    "num_generations": "sampling.group_size",
    "per_device_train_batch_size": "train.micro_batch_size",
    "max_completion_length": "sampling.max_new_tokens",
    # GRPOConfig's beta weighs the KL to the reference; DPOConfig's is DPO's own β.
    "beta": (
        "did you mean objective.kl_beta (TRL GRPOConfig's beta), or objective.dpo_beta with "
        "objective.name=dpo (DPOConfig's beta)?"
    ),
    "kl_coef": "objective.kl_beta",
    "epsilon": "objective.eps_low",
    "epsilon_high": "objective.eps_high",
    "num_iterations": "train.ppo_epochs",
    "max_steps": "train.steps",
    "max_grad_norm": "train.grad_clip",
    "save_steps": "train.checkpoint_every",
    "logging_steps": "train.log_every",
    "eval_steps": "eval.every",
    "model_name_or_path": "model.path",
    "dataset_name": "data.train_path",
    "reward_funcs": "reward.plugin",
    "entropy_coeff": "objective.entropy_coef",
    "loss_type": (
        "did you mean objective.agg (TRL GRPOConfig's loss_type: grpo, dr_grpo, dapo, ...), or "
        "objective.dpo_loss_type with objective.name=dpo (DPOConfig's sigmoid, ipo)?"
    ),
    "scale_rewards": "advantage.name",
    "importance_sampling_level": "objective.is_level",
    "gradient_accumulation_steps": (
        "no such setting: a step trains train.groups_per_step x sampling.group_size "
        "sequences in micro-batches of train.micro_batch_size"
    ),
}
_ARR = "actor_rollout_ref."
VERL_ALIASES = {
    _ARR + "model.path": "model.path",
    _ARR + "actor.optim.lr": "train.lr",
    _ARR + "actor.optim.weight_decay": "train.weight_decay",
    _ARR + "actor.optim.lr_warmup_steps": "train.warmup_steps",
    _ARR + "actor.ppo_micro_batch_size_per_gpu": "train.micro_batch_size",
    _ARR + "actor.ppo_mini_batch_size": "train.mini_batches",
    _ARR + "actor.ppo_epochs": "train.ppo_epochs",
    _ARR + "actor.grad_clip": "train.grad_clip",
    _ARR + "actor.clip_ratio": "objective.eps_low",
    _ARR + "actor.clip_ratio_low": "objective.eps_low",
    _ARR + "actor.clip_ratio_high": "objective.eps_high",
    _ARR + "actor.clip_ratio_c": "objective.dual_clip_c",
    _ARR + "actor.use_kl_loss": "objective.kl_beta",
    _ARR + "actor.kl_loss_coef": "objective.kl_beta",
    _ARR + "actor.kl_loss_type": "objective.kl_estimator",
    _ARR + "actor.entropy_coeff": "objective.entropy_coef",
    _ARR + "actor.loss_agg_mode": "objective.agg",
    _ARR + "actor.policy_loss.loss_mode": "objective.name",
    _ARR + "rollout.n": "sampling.group_size",
    _ARR + "rollout.temperature": "sampling.temperature",
    _ARR + "rollout.top_p": "sampling.top_p",
    _ARR + "rollout.top_k": "sampling.top_k",
    _ARR + "rollout.response_length": "sampling.max_new_tokens",
    _ARR + "rollout.name": "generator.backend",
    "data.train_files": "data.train_path",
    "data.val_files": "data.eval_path",
    "data.prompt_key": "data.prompt_field",
    "data.max_response_length": "sampling.max_new_tokens",
    "data.train_batch_size": "train.groups_per_step",
    "data.seed": "data.shuffle_seed",
    "algorithm.adv_estimator": "advantage.name",
    "algorithm.kl_ctrl.kl_coef": "objective.kl_beta",
    "trainer.total_training_steps": "train.steps",
    "trainer.save_freq": "train.checkpoint_every",
    "trainer.test_freq": "eval.every",
    "trainer.default_local_dir": "learner.output_dir",
    "reward_model.model.path": "reward.reward_model_path",
    "custom_reward_function.path": "reward.plugin",
    "custom_reward_function.name": "reward.plugin",
}

_GRPO_HINT = "GRPO is objective.name: ppo with advantage.name: grpo"
# Names of whole algorithms, or of the other half of the objective/advantage split.
ALGORITHM_HINTS = {
    "grpo": _GRPO_HINT,
    "dr_grpo": "Dr. GRPO is objective.name: ppo, objective.agg: seq-mean-token-sum-norm, "
    "advantage.name: dr_grpo",
    "dapo": "DAPO is objective.name: ppo (eps_high 0.28, agg token-mean) with advantage.name: "
    "grpo, buffer.filter_zero_variance: true and reward.overlong",
    "rloo": "rloo is an advantage: objective.name: ppo with advantage.name: rloo",
    "reinforce_pp": "reinforce_pp is an advantage: objective.name: ppo with advantage.name: "
    "reinforce_pp",
    "remax": "remax is an advantage: objective.name: ppo with advantage.name: remax",
}
_OBJECTIVES = ("ppo", "dual_clip", "decoupled_ppo", "cispo", "gspo", "gspo_token", "aspo")


def yaml_error_line(source: Path, exc: yaml.YAMLError) -> str:
    """`file:line:col: what` for a YAML syntax error (PyYAML counts from 0)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context, opened = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    what = problem
    if context and opened is not None and opened is not mark:
        what += f" ({context} started at line {opened.line + 1}, column {opened.column + 1})"
    elif context:
        what += f" ({context})"
    if mark is None:
        return f"{source}: YAML syntax error: {what}"
    return f"{source}:{mark.line + 1}:{mark.column + 1}: YAML syntax error: {what}"


def yaml_marks(text: str) -> dict[tuple[str, ...], tuple[tuple[int, int], tuple[int, int]]]:
    """(line, col) of every mapping key and of its value, by dotted path, 1-based."""
    marks: dict = {}

    def walk(node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = (*path, str(k.value))
                km, vm = k.start_mark, v.start_mark
                marks[key] = ((km.line + 1, km.column + 1), (vm.line + 1, vm.column + 1))
                walk(v, key)

    walk(yaml.compose(text), ())
    return marks


def _members(annotation) -> list[type[BaseModel]]:
    """The config sections a field may hold (several for a `type`-tagged union)."""
    seen, out = [annotation], []
    while seen:
        a = seen.pop()
        if isinstance(a, type) and issubclass(a, BaseModel):
            out.append(a)
        else:
            seen.extend(get_args(a))
    return out


def _walk_schema(root: type[BaseModel], loc: tuple) -> tuple[tuple[str, ...], list]:
    """The location as the user writes it (a union's tag, which pydantic inserts, dropped),
    and the sections holding its last key."""
    path: list[str] = []
    models: list = [root]
    parents: list = [root]
    for seg in loc:
        seg = str(seg)
        tagged = [m for m in models if "type" in m.model_fields and len(models) > 1]
        pick = [m for m in tagged if m.model_fields["type"].default == seg]
        if pick:
            models = pick
            continue
        parents = models
        field = next((m.model_fields[seg] for m in models if seg in m.model_fields), None)
        models = _members(field.annotation) if field is not None else []
        path.append(seg)
    return tuple(path), parents


def _all_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, f in model.model_fields.items():
        subs = _members(f.annotation)
        if subs:
            for s in subs:
                out += _all_fields(s, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return sorted(set(out))


def _flatten(value: Any, prefix: str) -> list[str]:
    if isinstance(value, dict) and value:
        return [p for k, v in value.items() for p in _flatten(v, f"{prefix}.{k}")]
    return [prefix]


def _alias(dotted: str) -> str | None:
    target = VERL_ALIASES.get(dotted) or TRL_ALIASES.get(dotted.rsplit(".", 1)[-1])
    if target is None:
        return None
    if " " in target:
        return target
    source = "verl" if dotted in VERL_ALIASES else "TRL"
    return f"did you mean {target}? ({source}'s {dotted.rsplit('.', 1)[-1]})"


def unknown_key_hint(root: type[BaseModel], path: tuple[str, ...], parents, value) -> str:
    """What the user probably meant by an unknown key."""
    dotted = ".".join(path)
    alias = _alias(dotted)
    if alias:
        return alias
    if isinstance(value, dict):
        mapped = [
            f"{leaf} -> {VERL_ALIASES[leaf]}"
            for leaf in _flatten(value, dotted)
            if leaf in VERL_ALIASES
        ]
        if mapped:
            return "verl's layout? here: " + ", ".join(mapped)
    leaf = path[-1]
    everywhere = _all_fields(root)
    same = [f for f in everywhere if f.rsplit(".", 1)[-1] == leaf]
    if same:
        return f"did you mean {' or '.join(same[:3])}?"
    siblings = sorted({n for m in parents for n in m.model_fields})
    close = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
    prefix = ".".join(path[:-1])
    if close:
        return f"did you mean {prefix + '.' if prefix else ''}{close[0]}?"
    by_leaf = {f.rsplit(".", 1)[-1]: f for f in everywhere}
    close = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.75)
    if close:
        return f"did you mean {by_leaf[close[0]]}?"
    return "`asyncrl config-fields` lists every field"


def _algorithm_hint(path: tuple[str, ...], value) -> str:
    if not isinstance(value, str):
        return ""
    if path in (("objective", "name"), ("objective",)) and value in ALGORITHM_HINTS:
        return "; " + ALGORITHM_HINTS[value]
    if path in (("advantage", "name"), ("advantage",)) and value in _OBJECTIVES:
        return f"; {value} is an objective: objective.name: {value} with advantage.name: grpo"
    return ""


def format_validation_error(
    exc: ValidationError,
    root: type[BaseModel],
    source: Path | None,
    text: str,
    overrides: list[tuple[str, str]],
) -> list[str]:
    """One line per error, each naming where the bad value came from: the override that set
    it, else the file's line and column, else the file; in the file's order, then the
    command line's."""
    try:
        marks = yaml_marks(text) if text else {}
    except yaml.YAMLError:
        marks = {}
    lines: list[tuple[tuple, str]] = []
    for err in exc.errors():
        path, parents = _walk_schema(root, err["loc"])
        dotted = ".".join(path)
        value = err.get("input")
        msg = str(err["msg"]).removeprefix("Value error, ").replace("\n", " ")
        if err["type"] == "extra_forbidden":
            body = f"{dotted}: unknown key; {unknown_key_hint(root, path, parents, value)}"
        elif err["type"] == "value_error":
            # A section's own check: its message names the fields involved.
            body = msg
        else:
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            body = f"{dotted or 'configuration'}: {msg}{shown}{_algorithm_hint(path, value)}"
        order, where = _where(path, msg, source, marks, overrides, err["type"])
        lines.append((order, f"{where}{body}"))
    return [line for _, line in sorted(lines, key=lambda x: x[0])]


def _where(path, msg, source, marks, overrides, kind) -> tuple[tuple, str]:
    """(sort key, `override ...: ` or `file:line:col: ` or `file: ` or nothing)."""
    # A missing field is the fault of whoever set its section (e.g. a union's `type`).
    scope = path[:-1] if kind == "missing" else path
    if scope:
        hits = [i for i, (key, _) in enumerate(overrides) if _overlaps(key.split("."), scope)]
    else:
        hits = [i for i, (key, _) in enumerate(overrides) if key in msg]
    if hits:
        return (1, hits[0]), f"override {', '.join(overrides[i][1] for i in hits)}: "
    if source is None:
        return (2,), ""
    for n in range(len(path), 0, -1):
        if path[:n] in marks:
            key_mark, value_mark = marks[path[:n]]
            line, col = key_mark if kind == "extra_forbidden" or n < len(path) else value_mark
            return (0, line, col), f"{source}:{line}:{col}: "
    return (2,), f"{source}: "


def _overlaps(a: list[str], b: tuple[str, ...]) -> bool:
    n = min(len(a), len(b))
    return tuple(a[:n]) == b[:n]

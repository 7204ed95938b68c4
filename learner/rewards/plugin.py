"""User reward plug-ins, called exactly as TRL's GRPOTrainer calls reward functions.

`fn(prompts=..., completions=..., completion_ids=..., trainer_state=..., log_extra=...,
log_metric=..., **columns)`: one list entry per completion everywhere; every dataset column
but the prompt comes as a keyword (a `solution` column arrives as `solution=[...]`);
prompts and completions are message lists for chat (`messages`) rows, strings otherwise. The
function returns one float or None per completion; None means "no reward from this function
for this sample" (NaN reads the same, as TRL turns None into NaN). So TRL's own helpers
(`trl.rewards.accuracy_reward`, `think_format_reward`, `get_soft_overlong_punishment(...)`
bound to a module attribute) plug in unchanged. The output is checked here because a wrong
length or an infinity would otherwise surface much later as a shape error or a NaN loss.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import math
import numbers
import sys
from pathlib import Path
from types import SimpleNamespace

from asyncrl.learner.rewards import RewardInput, RewardResult

logger = logging.getLogger(__name__)

# Keywords of the call itself; dataset columns of these names are not passed (TRL also keeps
# "prompt" and "completion" out of the columns).
_RESERVED = frozenset(
    {
        "prompt",
        "prompts",
        "completion",
        "completions",
        "completion_ids",
        "trainer_state",
        "log_extra",
        "log_metric",
    }
)


def _import(spec: str, where: str):
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"reward plug-in {spec!r}: no such file {str(path)!r}")
        # One module name per file, so two plug-ins from different files never clash.
        name = "asyncrl_reward_plugin_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
        if name in sys.modules:
            return sys.modules[name]
        loader_spec = importlib.util.spec_from_file_location(name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ValueError(f"reward plug-in {spec!r}: cannot load {str(path)!r}")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception:
            sys.modules.pop(name, None)
            raise
        return module
    try:
        return importlib.import_module(where)
    except ImportError as e:
        raise ValueError(
            f"reward plug-in {spec!r}: cannot import module {where!r} ({e}); is it on PYTHONPATH?"
        ) from e


def load_plugin(spec: str):
    """The callable named by 'module:function' or 'path/to/file.py:function'."""
    where, sep, func_name = spec.rpartition(":")
    if not sep or not where or not func_name:
        raise ValueError(
            f"reward plug-in {spec!r} must look like 'module:function' or 'file.py:function'"
        )
    fn = _import(spec, where)
    for part in func_name.split("."):  # allows 'module:Class.method'
        fn = getattr(fn, part, None)
        if fn is None:
            raise ValueError(f"reward plug-in {spec!r}: {where!r} has no attribute {func_name!r}")
    if not callable(fn):
        raise ValueError(f"reward plug-in {spec!r}: {func_name!r} is not callable")
    return fn


def check_rewards(spec: str, out, n: int) -> list[float | None]:
    """One float or None per completion; NaN becomes None, anything else raises."""
    try:
        values = list(out)
    except TypeError:
        raise ValueError(
            f"reward {spec!r} returned {type(out).__name__}, expected a list of {n} floats"
        ) from None
    if len(values) != n:
        raise ValueError(f"reward {spec!r} returned {len(values)} rewards for {n} completions")
    rewards: list[float | None] = []
    for i, v in enumerate(values):
        if v is None:
            rewards.append(None)
            continue
        # numbers.Real takes numpy scalars and rejects strings and tensors of size > 1.
        if not isinstance(v, numbers.Real) or math.isinf(float(v)):
            raise ValueError(
                f"reward {spec!r} returned {v!r} for completion {i}; rewards must be finite "
                "floats or None"
            )
        rewards.append(None if math.isnan(float(v)) else float(v))
    return rewards


def trl_kwargs(inp: RewardInput, completions: list[str]) -> dict:
    """The keyword arguments TRL passes, for `inp` with (capped) `completions`."""
    n = len(completions)
    if inp.chat:
        comps: list = [[{"role": "assistant", "content": c}] for c in completions]
    else:
        comps = list(completions)
    columns = {k: [v] * n for k, v in inp.row.items() if k not in _RESERVED}
    if inp.episodes:
        columns["finish_reasons"] = list(inp.finish_reasons)
    return {
        "prompts": [inp.prompt] * n,
        "completions": comps,
        "completion_ids": [list(ids) for ids in inp.completion_ids],
        **columns,
    }


class PluginReward:
    """A user function, called with TRL's keywords; its `log_metric` values become metrics."""

    def __init__(self, spec: str, label: str):
        self.spec = spec
        self.label = label
        self.fn = load_plugin(spec)
        logger.info("reward plug-in %s loaded", spec)

    def __call__(self, inp: RewardInput) -> RewardResult:
        metrics: dict[str, float] = {}

        def log_metric(name: str, value: float) -> None:
            metrics[f"reward_{self.label}_{name}"] = float(value)

        out = self.fn(
            **trl_kwargs(inp, inp.completions),
            trainer_state=SimpleNamespace(global_step=inp.step),
            log_extra=lambda column, values: None,  # no completions table here
            log_metric=log_metric,
        )
        return RewardResult(check_rewards(self.spec, out, len(inp.completions)), metrics)

    def close(self) -> None:
        close = getattr(self.fn, "close", None)
        if callable(close):
            close()

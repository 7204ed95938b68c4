"""User reward plug-in: `reward.plugin = 'module:function'`.

The function is called as `fn(prompts, completions, **row) -> list[float]`, the prompt
repeated once per completion (the shape TRL-style reward functions take), so existing
functions work unchanged. Its output is validated here because a wrong length or a NaN would
otherwise surface much later as a shape error or a NaN loss in the trainer.
"""

from __future__ import annotations

import importlib
import logging
import math
import numbers

from asyncrl.learner.rewards import RewardResult
from asyncrl.learner.rewards.config import RewardConfig

logger = logging.getLogger(__name__)


def load_plugin(spec: str):
    """The callable named by 'module:function' (module importable from sys.path)."""
    if ":" not in spec:
        raise ValueError(f"reward.plugin {spec!r} must look like 'module:function'")
    module_name, func_name = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(
            f"reward.plugin {spec!r}: cannot import module {module_name!r} ({e}); is it on "
            "PYTHONPATH?"
        ) from e
    fn = module
    for part in func_name.split("."):  # allows 'module:Class.method'
        fn = getattr(fn, part, None)
        if fn is None:
            raise ValueError(
                f"reward.plugin {spec!r}: module {module_name!r} has no attribute {func_name!r}"
            )
    if not callable(fn):
        raise ValueError(f"reward.plugin {spec!r}: {func_name!r} is not callable")
    return fn


class PluginReward:
    """Calls the user's function and checks it returned one finite float per completion."""

    def __init__(self, cfg: RewardConfig):
        self.spec = cfg.plugin or ""
        self.fn = load_plugin(self.spec)
        logger.info("reward plug-in %s loaded", self.spec)

    def __call__(
        self, prompt: str, completions: list[str], row: dict, completion_lengths: list[int]
    ) -> RewardResult:
        out = self.fn([prompt] * len(completions), completions, **row)
        try:
            values = list(out)
        except TypeError:
            raise ValueError(
                f"reward.plugin {self.spec!r} returned {type(out).__name__}, expected a list of "
                f"{len(completions)} floats"
            ) from None
        if len(values) != len(completions):
            raise ValueError(
                f"reward.plugin {self.spec!r} returned {len(values)} rewards for "
                f"{len(completions)} completions"
            )
        rewards = []
        for i, v in enumerate(values):
            # numbers.Real takes numpy scalars and rejects strings, None and tensors of size > 1.
            if not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
                raise ValueError(
                    f"reward.plugin {self.spec!r} returned {v!r} for completion {i}; rewards "
                    "must be finite floats"
                )
            rewards.append(float(v))
        return RewardResult(rewards)

    def close(self) -> None:
        close = getattr(self.fn, "close", None)
        if callable(close):
            close()

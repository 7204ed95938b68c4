"""What every experiment tracker is: a sink for one flat dict of numbers per step.

Trackers are called on rank 0 only, from the step loop's thread, after the statistics have
been cleaned by `clean_stats` (bounded, sanitised names; plain floats).
"""

from __future__ import annotations

import math
import re
from typing import Protocol

import numpy as np

# Statistic names become Prometheus series and TensorBoard tags; names come partly from reward
# plug-ins (their metrics dicts), so they are bounded in length and in number.
MAX_NAME_CHARS = 64
_INVALID = re.compile(r"[^a-zA-Z0-9_]")
# Suffixes Prometheus reserves for counters, histograms and summaries: a gauge must not end so.
_RESERVED_SUFFIXES = ("_total", "_count", "_sum", "_bucket", "_created", "_info")


class TrackerUnavailable(RuntimeError):
    """A configured tracker's library is not installed (one line for the operator)."""


class Tracker(Protocol):
    def log(self, step: int, stats: dict[str, float]) -> None:
        """Record `stats` as the values at policy version `step`."""

    def close(self) -> None:
        """Flush and release files; called once at the end of the run."""


def stat_name(key: str) -> str | None:
    """A statistic's key as a metric-safe name (letters, digits, underscores; not starting
    with a digit; no reserved suffix), or None when nothing usable is left."""
    name = _INVALID.sub("_", str(key)).strip("_").lower()[:MAX_NAME_CHARS]
    if not name:
        return None
    if name[0].isdigit():
        name = "s_" + name
    if name.endswith(_RESERVED_SUFFIXES):
        name += "_value"
    return name


def as_float(value) -> float | None:
    """A number as float (bools and numpy scalars count), anything else None. Non-finite
    values are kept: a NaN loss is what the operator must see."""
    if isinstance(value, bool | int | float | np.number):
        return float(value)
    return None


def json_number(x: float) -> float | None:
    """JSON has no NaN or infinity: such values are written as null."""
    return x if math.isfinite(x) else None


class StatNames:
    """Cleans each step's statistics into `{name: float}` with at most `limit` distinct
    names over the run: the first `limit` seen are kept, later new ones are dropped (and
    returned once each, for the caller to log and count)."""

    def __init__(self, limit: int = 128):
        self.limit = limit
        self._known: dict[str, str] = {}  # key as reported -> clean name
        self._dropped: set[str] = set()

    def clean(self, stats: dict) -> tuple[dict[str, float], list[str]]:
        out: dict[str, float] = {}
        newly_dropped = []
        for key, value in stats.items():
            x = as_float(value)
            if x is None:
                continue
            name = self._known.get(key)
            if name is None:
                if key in self._dropped:
                    continue
                name = stat_name(key)
                if name is None or len(self._known) >= self.limit:
                    self._dropped.add(key)
                    newly_dropped.append(str(key)[:MAX_NAME_CHARS])
                    continue
                self._known[key] = name
            out[name] = x
        return out, newly_dropped

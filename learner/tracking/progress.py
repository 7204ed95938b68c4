"""The learner's progress line for people watching a terminal.

`step 12/120 | 1534 tok/s | reward 0.625 | staleness 0.50 (max 1) | eta 3m05s | ...`: one line
every `log_every` steps, and at least one per step once a step takes longer than
`PROGRESS_SECONDS` (a slow GPU step is never silent), always for the first and last step.
"""

from __future__ import annotations

import math

# Lines come at least this often when steps are slow, and no more often than every
# `log_every` steps when they are fast.
PROGRESS_SECONDS = 10.0


def fmt_duration(seconds: float | None) -> str:
    """Whole seconds as `45s`, `3m05s`, `2h07m`; `?` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def fmt_value(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def format_progress(
    step: int,
    total: int,
    tokens_per_second: float,
    reward: float | None,
    staleness_mean: float | None,
    staleness_max: float | None,
    eta_seconds: float | None,
    extra: dict[str, str] | None = None,
) -> str:
    """The progress line: the fixed fields first (what a person scans for), then `extra`
    as `name value` pairs in their order."""
    stale = "n/a"
    if staleness_mean is not None and math.isfinite(staleness_mean):
        stale = f"{staleness_mean:.2f}"
        if staleness_max is not None and math.isfinite(staleness_max):
            stale += f" (max {int(staleness_max)})"
    parts = [
        f"step {step}/{total}",
        f"{tokens_per_second:.0f} tok/s",
        f"reward {fmt_value(reward)}",
        f"staleness {stale}",
        f"eta {fmt_duration(eta_seconds)}",
    ]
    parts += [f"{k} {v}" for k, v in (extra or {}).items()]
    return " | ".join(parts)


def eta_seconds(
    step: int, total: int, start_step: int, elapsed: float, time_left: float | None = None
) -> float | None:
    """Remaining time at the mean step time since the start, capped by what remains of a
    wall-time limit (`time_left`, None = no limit); None before the first step."""
    done = step - start_step
    if done <= 0:
        return None
    eta = elapsed / done * max(total - step, 0)
    return min(eta, max(time_left, 0.0)) if time_left is not None else eta


class ProgressGate:
    """Decides which steps print a line (see the module docstring)."""

    def __init__(self, total: int, log_every: int, seconds: float = PROGRESS_SECONDS):
        self.total, self.log_every, self.seconds = total, max(1, log_every), seconds
        self._last_step: int | None = None
        self._last_time = 0.0

    def due(self, step: int, now: float) -> bool:
        last = self._last_step
        due = (
            last is None
            or step >= self.total
            or step - last >= self.log_every
            or now - self._last_time >= self.seconds
        )
        if due:
            self._last_step, self._last_time = step, now
        return due

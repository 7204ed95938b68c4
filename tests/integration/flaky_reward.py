"""Reward plug-ins that fail on some prompts (for test_local and test_reward_faults), called as
TRL calls reward functions: every dataset column a list, one entry per completion.

Which prompts fail is fixed by a hash of the prompt text, so runs are repeatable.
"""

from __future__ import annotations

import time
import zlib


def _exact(completions, answer) -> list[float]:
    return [1.0 if c.strip() == str(a).strip() else 0.0 for c, a in zip(completions, answer)]


def score(prompts, completions, answer, **kwargs):
    """Raises on a third of the prompts."""
    if zlib.crc32(prompts[0].encode()) % 3 == 0:
        raise ValueError("flaky reward")
    return _exact(completions, answer)


def hang_or_raise(prompts, completions, answer, **kwargs):
    """Sleeps forever on a quarter of the prompts, raises on another quarter, scores the rest."""
    kind = zlib.crc32(prompts[0].encode()) % 4
    if kind == 0:
        while True:
            time.sleep(1)
    if kind == 1:
        raise ValueError("flaky reward")
    return _exact(completions, answer)


def never(prompts, completions, **kwargs):
    """No reward for any sample (as a reward reading a column the data does not have)."""
    return [None] * len(completions)

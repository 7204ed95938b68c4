"""Reward plug-ins for test_reward_pool, importable by the pool's spawned workers (which inherit
the test process's sys.path)."""

from __future__ import annotations

import os
import time


def exact(prompts, completions, **row):
    """1 for a completion equal to the row's answer, else 0."""
    return [1.0 if c == row["answer"] else 0.0 for c in completions]


def worker_pid(prompts, completions, **row):
    """The scoring process's id, to tell one worker from its replacement."""
    return [float(os.getpid())] * len(completions)


def moody(prompts, completions, **row):
    """Hangs on prompt 'hang', raises on prompt 'raise', else scores like `exact`."""
    if prompts[0] == "hang":
        while True:
            time.sleep(1)
    if prompts[0] == "raise":
        raise ValueError("this reward does not like the prompt")
    return exact(prompts, completions, **row)

"""Reward plug-ins for the reward tests, importable by the pool's spawned workers (which
inherit the test process's sys.path). Called as TRL calls reward functions: by keyword, every
dataset column a list with one entry per completion."""

from __future__ import annotations

import os
import time

from trl.rewards import get_soft_overlong_punishment

# TRL's factory bound to a module attribute: how a user names it in reward.functions.
# L_max 4, L_cache 2: 0 up to 2 tokens, (2 - n) / 2 for 3 and 4, -1 beyond.
soft_overlong = get_soft_overlong_punishment(max_completion_len=4, soft_punish_cache=2)


def exact(prompts, completions, answer, **kwargs):
    """1 for a completion equal to its row's answer, else 0."""
    return [1.0 if c == a else 0.0 for c, a in zip(completions, answer)]


def worker_pid(prompts, completions, **kwargs):
    """The scoring process's id, to tell one worker from its replacement."""
    return [float(os.getpid())] * len(completions)


def moody(prompts, completions, **kwargs):
    """Hangs on prompt 'hang', raises on prompt 'raise', else scores like `exact`."""
    if prompts[0] == "hang":
        while True:
            time.sleep(1)
    if prompts[0] == "raise":
        raise ValueError("this reward does not like the prompt")
    return exact(prompts, completions, **kwargs)


def only_first(prompts, completions, **kwargs):
    """A reward for the first completion only; None (no reward) for the others."""
    return [1.0] + [None] * (len(completions) - 1)


def never(prompts, completions, **kwargs):
    """No reward for anything."""
    return [None] * len(completions)


def echo_kwargs(
    prompts, completions, completion_ids, trainer_state, log_metric, log_extra, **columns
):
    """Records what it was called with in a metric per keyword, and scores the number of
    completion ids."""
    log_metric("columns", float(len(columns)))
    log_metric("step", float(trainer_state.global_step))
    return [float(len(ids)) for ids in completion_ids]


def sees_answer(prompts, completions, **kwargs):
    """10 per completion when the rows handed to rewards carry an `answer` column, else 0."""
    return [10.0 if "answer" in kwargs else 0.0] * len(completions)

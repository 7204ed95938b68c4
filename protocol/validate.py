"""Semantic validation of rollouts at intake: checks that need the learner's context.

`protocol.codec.decode` guarantees structure and dtypes; this module checks meaning: the lease
asked for G samples, lengths add up, logprobs are finite, not positive and above a floor, token
ids fit the vocabulary, every token's version lies between the version the lease was issued at
and the learner's; a multi-turn episode's loss mask covers every token, is 0/1, starts on a
model token and leaves environment tokens without logprobs. A failure raises `ProtocolError`
whose reason (one of `ROLLOUT_REASONS`) is the group's drop reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asyncrl.protocol.codec import ProtocolError
from asyncrl.protocol.messages import RolloutGroup

# `max_turns`, `budget` and `tool_timeout` end multi-turn episodes (generators/envs); rewards
# see them.
FINISH_REASONS = frozenset({"stop", "length", "abort", "max_turns", "budget", "tool_timeout"})

# Every reason `validate_rollout` gives: a bounded label set for the drop counter.
ROLLOUT_REASONS = (
    "group_size",
    "bad_finish_reasons",
    "bad_lengths",
    "too_long",
    "bad_tokens",
    "bad_logprobs",
    "bad_versions",
    "bad_mask",
    "bad_env_rewards",
)

# Per-turn environment rewards beyond this magnitude are corrupt, not a signal.
MAX_ENV_REWARD = 1e4


@dataclass(frozen=True)
class RolloutLimits:
    """What a rollout may contain; set by the learner from its config and tokenizer."""

    vocab_size: int
    max_new_tokens: int
    # Logprobs slightly above zero come from fp rounding in engines; beyond this is corrupt.
    logprob_tolerance: float = 1e-3
    # A sampled token's logprob far below any an engine reports (-1e30 passes `isfinite`) would
    # give importance ratios of exp(1e30): refused as corrupt.
    min_logprob: float = -1e4


def validate_rollout(
    msg: RolloutGroup,
    limits: RolloutLimits,
    group_size: int,
    learner_version: int,
    issued_version: int = 0,
) -> None:
    """Raise ProtocolError if `msg` is not a well-formed group for a lease of `group_size`
    issued when the generator held `issued_version`: its tokens cannot have been sampled by
    older weights (versions only go forward within a run) nor by weights the learner has not
    made yet."""
    lengths = msg.lengths
    if lengths.ndim != 1 or lengths.shape[0] != group_size:
        raise ProtocolError("group_size", f"{lengths.shape} != ({group_size},)")
    if len(msg.finish_reasons) != group_size:
        raise ProtocolError("bad_finish_reasons", "count mismatch")
    if not all(r in FINISH_REASONS for r in msg.finish_reasons):
        raise ProtocolError("bad_finish_reasons", "unknown reason")
    if (lengths < 0).any():
        raise ProtocolError("bad_lengths", "negative length")
    if (lengths > limits.max_new_tokens).any():
        raise ProtocolError("too_long", f"a sample is longer than {limits.max_new_tokens}")
    total = int(lengths.sum())
    for name in ("tokens", "logprobs", "versions"):
        arr = getattr(msg, name)
        if arr.ndim != 1 or arr.shape[0] != total:
            raise ProtocolError("bad_lengths", f"{name} has {arr.shape} for {total} tokens")
    if total and ((msg.tokens < 0).any() or (msg.tokens >= limits.vocab_size).any()):
        raise ProtocolError("bad_tokens", "outside vocabulary")
    if not np.isfinite(msg.logprobs).all():
        raise ProtocolError("bad_logprobs", "not finite")
    if total and msg.logprobs.max() > limits.logprob_tolerance:
        raise ProtocolError("bad_logprobs", "positive")
    if total and msg.logprobs.min() < limits.min_logprob:
        raise ProtocolError("bad_logprobs", f"below {limits.min_logprob:g}")
    low = max(issued_version, 0)
    if total and ((msg.versions < low).any() or (msg.versions > learner_version).any()):
        raise ProtocolError(
            "bad_versions", f"outside [{low}, {learner_version}] (lease issued, learner)"
        )
    if msg.loss_mask is not None:
        _check_mask(msg, lengths, total)
    if msg.env_rewards is not None:
        r = msg.env_rewards
        if r.shape != (group_size,):
            raise ProtocolError("bad_env_rewards", f"{r.shape} != ({group_size},)")
        if not np.isfinite(r).all() or (np.abs(r) > MAX_ENV_REWARD).any():
            raise ProtocolError("bad_env_rewards", f"not finite or beyond {MAX_ENV_REWARD:g}")
    if msg.baseline_tokens is not None:
        b = msg.baseline_tokens
        if b.ndim != 1:
            raise ProtocolError("bad_lengths", "baseline is not one sequence")
        if b.shape[0] > limits.max_new_tokens:
            raise ProtocolError("too_long", "baseline longer than allowed")
        if b.size and ((b < 0).any() or (b >= limits.vocab_size).any()):
            raise ProtocolError("bad_tokens", "baseline outside vocabulary")


def _check_mask(msg: RolloutGroup, lengths: np.ndarray, total: int) -> None:
    """One mask entry per token, 0 or 1; each non-empty sample starts with a model token (the
    episode begins with the model's turn after the prompt); environment tokens carry logprob
    exactly 0, so a sender cannot smuggle a behaviour logprob onto a token that is not
    trained (nor mislabel a model token as the environment's without it showing)."""
    mask = msg.loss_mask
    if mask.ndim != 1 or mask.shape[0] != total:
        raise ProtocolError("bad_mask", f"loss_mask has {mask.shape} for {total} tokens")
    if total and mask.max() > 1:
        raise ProtocolError("bad_mask", "values other than 0 and 1")
    starts = (np.cumsum(lengths) - lengths)[lengths > 0]
    if starts.size and (mask[starts] != 1).any():
        raise ProtocolError("bad_mask", "a sample starts with an environment token")
    if total and (msg.logprobs[mask == 0] != 0).any():
        raise ProtocolError("bad_mask", "environment tokens carry logprobs")

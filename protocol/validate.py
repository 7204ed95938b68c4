"""Semantic validation of rollouts at intake: checks that need the learner's context.

`protocol.codec.decode` guarantees structure and dtypes; this module checks meaning: the lease
asked for G samples, lengths add up, logprobs are finite and not positive, token ids fit the
vocabulary, versions are plausible. A failure raises `ProtocolError` whose reason becomes the
`invalid` drop counter's detail.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asyncrl.protocol.codec import ProtocolError
from asyncrl.protocol.messages import RolloutGroup

FINISH_REASONS = frozenset({"stop", "length", "abort"})


@dataclass(frozen=True)
class RolloutLimits:
    """What a rollout may contain; set by the learner from its config and tokenizer."""

    vocab_size: int
    max_new_tokens: int
    # Logprobs slightly above zero come from fp rounding in engines; beyond this is corrupt.
    logprob_tolerance: float = 1e-3


def validate_rollout(
    msg: RolloutGroup, limits: RolloutLimits, group_size: int, learner_version: int
) -> None:
    """Raise ProtocolError if `msg` is not a well-formed group for a lease of `group_size`."""
    lengths = msg.lengths
    if lengths.ndim != 1 or lengths.shape[0] != group_size:
        raise ProtocolError("group_size", f"{lengths.shape} != ({group_size},)")
    if len(msg.finish_reasons) != group_size:
        raise ProtocolError("finish_reasons", "count mismatch")
    if not all(r in FINISH_REASONS for r in msg.finish_reasons):
        raise ProtocolError("finish_reasons", "unknown reason")
    if (lengths < 0).any() or (lengths > limits.max_new_tokens).any():
        raise ProtocolError("lengths", "out of range")
    total = int(lengths.sum())
    for name in ("tokens", "logprobs", "versions"):
        arr = getattr(msg, name)
        if arr.ndim != 1 or arr.shape[0] != total:
            raise ProtocolError("lengths", f"{name} has {arr.shape} for {total} tokens")
    if total and ((msg.tokens < 0).any() or (msg.tokens >= limits.vocab_size).any()):
        raise ProtocolError("token_ids", "outside vocabulary")
    if not np.isfinite(msg.logprobs).all():
        raise ProtocolError("logprobs", "not finite")
    if total and msg.logprobs.max() > limits.logprob_tolerance:
        raise ProtocolError("logprobs", "positive")
    if total and ((msg.versions < 0).any() or (msg.versions > learner_version).any()):
        raise ProtocolError("versions", "outside [0, learner version]")
    if msg.baseline_tokens is not None:
        b = msg.baseline_tokens
        if b.ndim != 1 or b.shape[0] > limits.max_new_tokens:
            raise ProtocolError("baseline", "bad shape")
        if b.size and ((b < 0).any() or (b >= limits.vocab_size).any()):
            raise ProtocolError("baseline", "outside vocabulary")

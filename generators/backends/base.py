"""The interface every inference backend implements, and the types it returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()  # generation ends once the decoded response contains one


@dataclass
class Sample:
    """One completion: token ids, the behaviour logprob of each sampled token under the
    distribution it was drawn from, and the weights version that produced each token."""

    tokens: np.ndarray  # int32 [T]
    logprobs: np.ndarray  # float32 [T]
    versions: np.ndarray  # int32 [T]
    finish_reason: str  # "stop" | "length" | "abort"


class Backend(Protocol):
    """An engine that samples completions and accepts new weights."""

    name: str
    version: int
    vocab_size: int

    def generate(self, prompt_ids: np.ndarray, n: int, params: SamplingParams) -> list[Sample]:
        """Sample `n` completions of one prompt."""
        ...

    def generate_greedy(self, prompt_ids: np.ndarray, max_new_tokens: int) -> np.ndarray:
        """One greedy completion (ReMax baseline)."""
        ...

    def load_weights(self, blob: bytes, digest: str, version: int) -> None:
        """Verify and load serialized weights; afterwards `version == version`. The caller
        reuses `blob` for the next version, so nothing may keep a view of it."""
        ...

    def close(self) -> None: ...

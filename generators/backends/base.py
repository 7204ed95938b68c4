"""The interface every inference backend implements, the capabilities it may declare, and the
types it returns.

Every backend samples and loads a verified blob (`Backend`). What only some engines can do is
declared in `capabilities`, each with its protocol: the generator loop and the weight fetchers
read the declaration and never probe a backend for methods or patch it from outside.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from asyncrl.protocol.messages import NcclPlan
from asyncrl.protocol.settings import SamplingParams


@dataclass
class Sample:
    """One completion: token ids, the behaviour logprob of each sampled token under the
    distribution it was drawn from, and the weights version that produced each token."""

    tokens: np.ndarray  # int32 [T]
    logprobs: np.ndarray  # float32 [T]
    versions: np.ndarray  # int32 [T]
    finish_reason: str  # "stop" | "length" | "abort" (episodes: also protocol's others)
    # Multi-turn episodes: 1 on model tokens, 0 on environment tokens; None = all model.
    mask: np.ndarray | None = None  # uint8 [T]
    env_reward: float = 0.0  # the environment's per-turn rewards, summed


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do beyond `Backend`; each flag promises one protocol below."""

    inflight_loads: bool = False  # `InflightLoads`: loads new weights between decode steps
    weight_directories: bool = False  # `WeightDirectories`: loads a version directory by path
    distributed_groups: bool = False  # `DistributedGroups`: receives nccl broadcasts
    # `TokenContinuation`: continues several token sequences (multi-turn episodes).
    token_continuation: bool = False
    # `BatchedGroups`: samples the groups of several leases in one batch.
    batched_groups: bool = False


class Backend(Protocol):
    """An engine that samples completions and accepts new weights."""

    name: str
    version: int
    vocab_size: int
    capabilities: Capabilities

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

    def health(self) -> tuple[bool, str]:
        """Whether the engine answers (for /healthz; called from the metrics server's
        threads, so quick and bounded), and why not."""
        ...

    def close(self) -> None: ...


InflightMode = Literal["continue", "reprefill"]


class InflightLoads(Backend, Protocol):
    """`capabilities.inflight_loads`: a long generation need not finish on stale weights."""

    def set_inflight_hook(
        self, hook: Callable[[], None], mode: InflightMode, check_every: int
    ) -> None:
        """Call `hook` every `check_every` decode steps; it may load newer weights (and so
        change `version`). `continue` keeps the KV cache of earlier tokens, `reprefill`
        recomputes it with the new weights over the prompt and the tokens so far."""
        ...


class TokenContinuation(Backend, Protocol):
    """`capabilities.token_continuation`: one model turn for each of several contexts given
    as token ids (prompt, earlier turns and environment tokens), never re-tokenised, so the
    behaviour logprobs of earlier turns stay the ones the tokens were sampled with."""

    def continue_batch(
        self, contexts: list[np.ndarray], params: SamplingParams, greedy: bool = False
    ) -> list[Sample]:
        """One sample per context (in order), `params.max_new_tokens` at most each."""
        ...


def split_groups(samples: list[Sample], ns: list[int]) -> list[list[Sample]]:
    """A batch's samples (group after group, `ns[i]` each) back into their groups."""
    out, k = [], 0
    for n in ns:
        out.append(samples[k : k + n])
        k += n
    return out


class BatchedGroups(Backend, Protocol):
    """`capabilities.batched_groups`: the groups of several prompts sampled together, each
    completion as it would be sampled alone (same positions, same distribution), so a
    generator holding several leases fills the engine's batch instead of one group at a time."""

    def generate_groups(
        self, prompts: list[np.ndarray], ns: list[int], params: SamplingParams
    ) -> list[list[Sample]]:
        """`ns[i]` completions of `prompts[i]`, for each i, in order."""
        ...


class WeightDirectories(Backend, Protocol):
    """`capabilities.weight_directories`: the engine reads a version directory itself (the
    layout of `asyncrl.protocol.blob.write_version_dir`)."""

    def update_from_disk(self, path: str, version: int) -> None: ...


class DistributedGroups(Backend, Protocol):
    """`capabilities.distributed_groups`: the engine joins the learner's weight-update group
    and receives versions as the learner broadcasts them."""

    def nccl_world_size(self) -> int:
        """The learner plus every rank of the engine that loads weights."""
        ...

    def join_update_group(
        self, address: str, port: int, group_name: str, backend: str, world_size: int
    ) -> None: ...

    def update_from_buckets(self, plan: NcclPlan, version: int, group_name: str) -> None: ...

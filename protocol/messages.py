"""Wire message types exchanged between the learner hub and generators.

Each message is a plain dataclass. Scalar fields travel in the msgpack header; numpy arrays
travel as separate raw frames (see `protocol.codec`). `FIELDS` and `ARRAYS` on each class are
the schema the codec validates against, so adding a field means touching one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

SCHEMA_VERSION = 1


@dataclass
class Message:
    """Base class: `TYPE` names the message on the wire; `FIELDS` maps scalar field -> types;
    `ARRAYS` maps array field -> allowed dtype."""

    TYPE: ClassVar[str] = ""
    FIELDS: ClassVar[dict[str, tuple[type, ...]]] = {}
    ARRAYS: ClassVar[dict[str, str]] = {}


@dataclass
class Hello(Message):
    """First message of a generator; the reply is a `Welcome`."""

    generator_id: str
    backend: str
    version: int

    TYPE: ClassVar[str] = "hello"
    FIELDS: ClassVar = {"generator_id": (str,), "backend": (str,), "version": (int,)}


@dataclass
class Welcome(Message):
    """Reply to `Hello`: what the generator needs to start, including the latest weights."""

    learner_version: int
    weights_version: int
    weights_digest: str
    weights_size: int
    weights_chunks: int
    heartbeat_seconds: float
    vocab_size: int
    rollouts_port: int
    weights_port: int
    weights_path: str = ""  # disk transport: where the latest version lies
    lease_seconds: float = 0.0  # lease duration before heartbeats; 0 = not announced
    nccl: bool = False  # the learner broadcasts weights to servers that join a group (NcclJoin)

    TYPE: ClassVar[str] = "welcome"
    FIELDS: ClassVar = {
        "learner_version": (int,),
        "weights_version": (int,),
        "weights_digest": (str,),
        "weights_size": (int,),
        "weights_chunks": (int,),
        "heartbeat_seconds": (float, int),
        "vocab_size": (int,),
        "rollouts_port": (int,),
        "weights_port": (int,),
        "weights_path": (str,),
        "lease_seconds": (float, int),
        "nccl": (bool,),
    }


@dataclass
class Heartbeat(Message):
    """Periodic liveness signal; lists the leases the generator still works on."""

    generator_id: str
    version: int
    lease_ids: list[int] = field(default_factory=list)

    TYPE: ClassVar[str] = "heartbeat"
    FIELDS: ClassVar = {"generator_id": (str,), "version": (int,), "lease_ids": (list,)}


@dataclass
class LeaseRequest(Message):
    """Ask for one prompt group. `version` is the weights version the generator holds: the gate
    uses it, so a generator that has not loaded recent weights cannot take work it would make
    too stale."""

    generator_id: str
    version: int

    TYPE: ClassVar[str] = "lease_request"
    FIELDS: ClassVar = {"generator_id": (str,), "version": (int,)}


@dataclass
class Lease(Message):
    """One prompt group to generate, returned with `lease_id` before `deadline` (unix seconds)."""

    lease_id: int
    prompt_ids: np.ndarray
    group_size: int
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int
    deadline: float
    issued_version: int
    greedy_baseline: bool = False
    stop: list[str] = field(default_factory=list)  # stop strings (besides EOS)

    TYPE: ClassVar[str] = "lease"
    FIELDS: ClassVar = {
        "lease_id": (int,),
        "group_size": (int,),
        "temperature": (float, int),
        "top_p": (float, int),
        "top_k": (int,),
        "max_new_tokens": (int,),
        "deadline": (float, int),
        "issued_version": (int,),
        "greedy_baseline": (bool,),
        "stop": (list,),
    }
    ARRAYS: ClassVar = {"prompt_ids": "int32"}


@dataclass
class LeaseDenied(Message):
    """No lease now: `reason` is `gate` (staleness limit), `exhausted` (dataset done) or
    `version` (the generator must load newer weights first)."""

    reason: str
    retry_after: float
    learner_version: int

    TYPE: ClassVar[str] = "lease_denied"
    FIELDS: ClassVar = {"reason": (str,), "retry_after": (float, int), "learner_version": (int,)}


@dataclass
class LeaseReturn(Message):
    """A generator gives a lease back unfinished (shutdown); it is re-issued at once."""

    generator_id: str
    lease_ids: list[int]

    TYPE: ClassVar[str] = "lease_return"
    FIELDS: ClassVar = {"generator_id": (str,), "lease_ids": (list,)}


@dataclass
class Ack(Message):
    """Generic reply to heartbeats and lease returns; carries the learner's version."""

    learner_version: int

    TYPE: ClassVar[str] = "ack"
    FIELDS: ClassVar = {"learner_version": (int,)}


@dataclass
class RolloutGroup(Message):
    """G completions of one leased prompt, flattened: sample i's tokens are
    `tokens[offsets[i]:offsets[i]+lengths[i]]`, with `logprobs` and `versions` aligned to them.
    `offsets` is derived, not sent."""

    lease_id: int
    generator_id: str
    tokens: np.ndarray  # int32 [sum(lengths)]
    logprobs: np.ndarray  # float32 [sum(lengths)], behaviour logprob of each sampled token
    versions: np.ndarray  # int32 [sum(lengths)], weights version that sampled each token
    lengths: np.ndarray  # int32 [G]
    finish_reasons: list[str]
    generate_seconds: float
    baseline_tokens: np.ndarray | None = None  # int32, the greedy sample (remax) if asked

    TYPE: ClassVar[str] = "rollout_group"
    FIELDS: ClassVar = {
        "lease_id": (int,),
        "generator_id": (str,),
        "finish_reasons": (list,),
        "generate_seconds": (float, int),
    }
    ARRAYS: ClassVar = {
        "tokens": "int32",
        "logprobs": "float32",
        "versions": "int32",
        "lengths": "int32",
        "baseline_tokens": "int32",
    }

    @property
    def group_size(self) -> int:
        return int(self.lengths.shape[0])

    def sample_slices(self) -> list[slice]:
        ends = np.cumsum(self.lengths)
        starts = ends - self.lengths
        return [slice(int(s), int(e)) for s, e in zip(starts, ends)]

    @property
    def version(self) -> int:
        """The group's version is its oldest token's (in-flight updates can mix versions)."""
        return int(self.versions.min()) if self.versions.size else -1


@dataclass
class WeightsAnnouncement(Message):
    """Published on the weights PUB socket whenever a new version can be fetched. An empty
    `digest` means the version is announced as its serialisation starts (zmq transport):
    chunks are answered as they are written and the last one carries the digest."""

    version: int
    digest: str
    size: int
    chunks: int
    path: str = ""  # disk transport: a directory on shared storage holding this version

    TYPE: ClassVar[str] = "weights_announcement"
    FIELDS: ClassVar = {
        "version": (int,),
        "digest": (str,),
        "size": (int,),
        "chunks": (int,),
        "path": (str,),
    }


@dataclass
class WeightsRequest(Message):
    """Fetch one chunk of a published version over the control socket."""

    version: int
    index: int

    TYPE: ClassVar[str] = "weights_request"
    FIELDS: ClassVar = {"version": (int,), "index": (int,)}


@dataclass
class WeightsChunk(Message):
    """One chunk of serialized weights; `data` is empty with `missing=True` when the version
    is no longer held (the generator then waits for the next announcement). The last chunk
    of a version carries its digest (needed when it was announced without one)."""

    version: int
    index: int
    data: np.ndarray  # uint8
    missing: bool = False
    digest: str = ""

    TYPE: ClassVar[str] = "weights_chunk"
    FIELDS: ClassVar = {"version": (int,), "index": (int,), "missing": (bool,), "digest": (str,)}
    ARRAYS: ClassVar = {"data": "uint8"}


@dataclass
class NcclJoin(Message):
    """Ask for a weight-update group for this generator's server (`world_size` = 1 + its
    tensor-parallel ranks); a generator that joins again gets a fresh group."""

    generator_id: str
    world_size: int

    TYPE: ClassVar[str] = "nccl_join"
    FIELDS: ClassVar = {"generator_id": (str,), "world_size": (int,)}


@dataclass
class NcclGroup(Message):
    """Where the group meets: the server joins it with rank offset 1 while the learner joins
    as rank 0. `error` says why none was made (no NCCL transport offered)."""

    address: str
    port: int
    group_name: str
    backend: str
    error: str = ""

    TYPE: ClassVar[str] = "nccl_group"
    FIELDS: ClassVar = {
        "address": (str,),
        "port": (int,),
        "group_name": (str,),
        "backend": (str,),
        "error": (str,),
    }


@dataclass
class NcclPull(Message):
    """Broadcast `version` into my group; the reply is an `NcclPlan`."""

    generator_id: str
    version: int
    group_name: str

    TYPE: ClassVar[str] = "nccl_pull"
    FIELDS: ClassVar = {"generator_id": (str,), "version": (int,), "group_name": (str,)}


@dataclass
class NcclPlan(Message):
    """The buckets the learner is about to broadcast, in order, flattened for the wire:
    bucket i holds the next `counts[i]` tensors of `names`/`dtypes` (torch names), tensor j
    has `ranks[j]` dimensions taken in turn from `dims`; a bucket's bytes are its tensors'
    concatenated. `missing`: the version is no longer held or the group is gone (`reason`)."""

    version: int
    digest: str
    names: list = field(default_factory=list)
    dtypes: list = field(default_factory=list)
    ranks: list = field(default_factory=list)
    dims: list = field(default_factory=list)
    counts: list = field(default_factory=list)
    missing: bool = False
    reason: str = ""

    TYPE: ClassVar[str] = "nccl_plan"
    FIELDS: ClassVar = {
        "version": (int,),
        "digest": (str,),
        "names": (list,),
        "dtypes": (list,),
        "ranks": (list,),
        "dims": (list,),
        "counts": (list,),
        "missing": (bool,),
        "reason": (str,),
    }

    def buckets(self) -> list[tuple[list[str], list[str], list[list[int]]]]:
        """(names, dtypes, shapes) per bucket; ValueError when the fields disagree."""
        n = len(self.names)
        if len(self.dtypes) != n or len(self.ranks) != n or sum(self.counts) != n:
            raise ValueError("nccl plan: names, dtypes, ranks and counts disagree")
        if sum(self.ranks) != len(self.dims) or min(self.counts, default=1) < 1:
            raise ValueError("nccl plan: dims do not match ranks, or an empty bucket")
        shapes, d = [], 0
        for r in self.ranks:
            shapes.append([int(x) for x in self.dims[d : d + r]])
            d += r
        out, t = [], 0
        for c in self.counts:
            out.append((self.names[t : t + c], self.dtypes[t : t + c], shapes[t : t + c]))
            t += c
        return out


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Welcome,
        Heartbeat,
        LeaseRequest,
        Lease,
        LeaseDenied,
        LeaseReturn,
        Ack,
        RolloutGroup,
        WeightsAnnouncement,
        WeightsRequest,
        WeightsChunk,
        NcclJoin,
        NcclGroup,
        NcclPull,
        NcclPlan,
    )
}

"""Wire message types exchanged between the learner hub and generators.

Each message is a dataclass declared once, by its annotations: `@message("name")` derives the
wire schema from them (`Message.SCHEMA`), which `protocol.codec` validates against. Scalars
(`int`, `float`, `str`, `bool`, `list`) travel in the msgpack header; a pydantic model travels
there as a map and is validated by that model on decode; numpy arrays (`NDArray[dtype]`, the
dtype being the one allowed on the wire) travel as separate raw frames. Adding a field means
writing one annotation.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import types
import typing
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel

from asyncrl.protocol.settings import SamplingParams

# The wire schema: bumped on any change of any message's fields (README, "Releases that mix").
# The one place the number lives; every header carries it and `Hello` repeats it.
SCHEMA_VERSION = 4


def _release() -> str:
    try:
        return importlib.metadata.version("asyncrl")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# This process's release, which a `Hello` names so a schema refusal can say who speaks what.
RELEASE = _release()

# What a scalar annotation accepts on the wire. msgpack writes a float that happens to be
# integral as it was given, so float fields take ints too.
_SCALAR_TYPES: dict[type, tuple[type, ...]] = {
    int: (int,),
    float: (float, int),
    str: (str,),
    bool: (bool,),
    list: (list,),
}


@dataclass(frozen=True)
class Schema:
    """The wire form of one message type, derived from its dataclass fields.

    `scalars`: header field -> accepted Python types; `models`: header field -> the pydantic
    model its map is validated with; `arrays`: frame field -> its only accepted dtype;
    `optional`: fields with a default, which a sender may leave out."""

    scalars: dict[str, tuple[type, ...]]
    models: dict[str, type[BaseModel]]
    arrays: dict[str, str]
    optional: frozenset[str]

    @property
    def header_fields(self) -> tuple[str, ...]:
        return (*self.scalars, *self.models)


class Message:
    """Base class of wire messages: `TYPE` names the message on the wire; `SCHEMA` is derived
    by `@message` from the fields."""

    TYPE: ClassVar[str] = ""
    SCHEMA: ClassVar[Schema] = Schema({}, {}, {}, frozenset())


MESSAGE_TYPES: dict[str, type[Message]] = {}


def _array_dtype(hint) -> str | None:
    """'int32' for `NDArray[np.int32]` (optionally `| None`), None for any other annotation."""
    if isinstance(hint, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _array_dtype(args[0]) if len(args) == 1 else None
    if typing.get_origin(hint) is not np.ndarray:
        return None
    (scalar,) = typing.get_args(typing.get_args(hint)[-1])
    return np.dtype(scalar).name


def message(type_name: str):
    """Class decorator: make `cls` a dataclass, derive its wire `SCHEMA` from the resolved
    annotations and register it under `type_name`. An annotation the codec cannot carry is a
    TypeError at import, never a surprise on the wire."""

    def wrap(cls: type[Message]) -> type[Message]:
        cls = dataclass(cls)
        if type_name in MESSAGE_TYPES:
            raise TypeError(f"message type {type_name!r} is declared twice")
        hints = typing.get_type_hints(cls)
        scalars, models, arrays, optional = {}, {}, {}, set()
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            origin = typing.get_origin(hint) or hint
            if (dtype := _array_dtype(hint)) is not None:
                arrays[f.name] = dtype
            elif isinstance(hint, type) and issubclass(hint, BaseModel):
                models[f.name] = hint
            elif origin in _SCALAR_TYPES:
                scalars[f.name] = _SCALAR_TYPES[origin]
            else:
                raise TypeError(f"{cls.__name__}.{f.name}: no wire form for {hint!r}")
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                optional.add(f.name)
        cls.TYPE = type_name
        cls.SCHEMA = Schema(scalars, models, arrays, frozenset(optional))
        MESSAGE_TYPES[type_name] = cls
        return cls

    return wrap


@message("hello")
class Hello(Message):
    """First message of a generator; the reply is a `Welcome`. `session`: the token of the
    generator's previous connection, if it had one: its open leases then follow it here."""

    generator_id: str
    backend: str
    version: int
    session: str = ""
    schema: int = SCHEMA_VERSION  # the generator's wire schema, as its header says
    release: str = RELEASE


@message("refused")
class Refused(Message):
    """The learner will not talk to this peer: `reason` `schema` (another wire schema; `detail`
    names both sides' schema and release) or `operator_key` (an operator's key said hello).
    Its fields never change: it is decoded whatever schema its header names
    (`codec.FROZEN_TYPES`), so every release from schema 4 on can tell why a newer or older
    learner refused it."""

    reason: str
    detail: str
    schema: int
    release: str


@message("welcome")
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
    # A secret naming this connection's session: heartbeats sent over another socket present
    # it to extend the leases this connection received.
    session: str = ""


@message("heartbeat")
class Heartbeat(Message):
    """Periodic liveness signal; lists the leases the generator still works on. Sent over its
    own socket, so it names the session (`Welcome.session`) whose leases it extends."""

    generator_id: str
    version: int
    lease_ids: list[str] = field(default_factory=list)
    session: str = ""


@message("lease_request")
class LeaseRequest(Message):
    """Ask for one prompt group. `version` is the weights version the generator holds: the gate
    uses it, so a generator that has not loaded recent weights cannot take work it would make
    too stale."""

    generator_id: str
    version: int


@message("lease")
class Lease(Message):
    """One prompt group to generate, returned with `lease_id` before `deadline` (unix seconds):
    `group_size` samples of `prompt_ids`, drawn as `sampling` says."""

    lease_id: str  # 32 hex characters: random, never reused
    prompt_ids: NDArray[np.int32]
    group_size: int
    sampling: SamplingParams
    deadline: float
    issued_version: int
    greedy_baseline: bool = False


@message("lease_denied")
class LeaseDenied(Message):
    """No lease now: `reason` is `gate` (staleness limit), `exhausted` (dataset done),
    `version` (the generator must load newer weights first) or `hello` (this connection has
    not said hello: leases are bound to the connection that receives them)."""

    reason: str
    retry_after: float
    learner_version: int


@message("lease_return")
class LeaseReturn(Message):
    """A generator gives a lease back unfinished (shutdown); it is re-issued at once."""

    generator_id: str
    lease_ids: list[str]


@message("ack")
class Ack(Message):
    """Generic reply to heartbeats and lease returns; carries the learner's version."""

    learner_version: int


@message("rollout_group")
class RolloutGroup(Message):
    """G completions of one leased prompt, flattened: sample i's tokens are
    `tokens[offsets[i]:offsets[i]+lengths[i]]`, with `logprobs` and `versions` aligned to them.
    `offsets` is derived, not sent.

    Multi-turn episodes (an environment between model turns) are one token sequence per
    sample: `loss_mask` is 1 on tokens the model sampled and 0 on environment tokens (tool
    results, template glue), which carry logprob 0 and are never trained on; None means
    every token is the model's. `env_rewards` are the environment's per-turn rewards summed
    per sample, added to the reward of the final answer."""

    lease_id: str
    generator_id: str
    tokens: NDArray[np.int32]  # [sum(lengths)]
    logprobs: NDArray[np.float32]  # [sum(lengths)], behaviour logprob of each sampled token
    versions: NDArray[np.int32]  # [sum(lengths)], weights version that sampled each token
    lengths: NDArray[np.int32]  # [G]
    finish_reasons: list[str]
    generate_seconds: float
    baseline_tokens: NDArray[np.int32] | None = None  # the greedy sample (remax) if asked
    loss_mask: NDArray[np.uint8] | None = None  # [sum(lengths)], 1 = model token
    env_rewards: NDArray[np.float32] | None = None  # [G], per-turn rewards summed per sample

    @property
    def group_size(self) -> int:
        return int(self.lengths.shape[0])

    def sample_slices(self) -> list[slice]:
        ends = np.cumsum(self.lengths)
        starts = ends - self.lengths
        return [slice(int(s), int(e)) for s, e in zip(starts, ends)]

    @property
    def version(self) -> int:
        """The group's version is its oldest model token's (in-flight updates can mix
        versions; environment tokens were sampled by no policy)."""
        mask = self.loss_mask
        v = self.versions
        if mask is not None and mask.shape == v.shape:
            v = v[mask == 1]
        return int(v.min()) if v.size else -1


@message("weights_announcement")
class WeightsAnnouncement(Message):
    """Published on the weights PUB socket whenever a new version can be fetched. An empty
    `digest` means the version is announced as its serialisation starts (zmq transport):
    chunks are answered as they are written and the last one carries the digest."""

    version: int
    digest: str
    size: int
    chunks: int
    path: str = ""  # disk transport: a directory on shared storage holding this version


@message("weights_request")
class WeightsRequest(Message):
    """Fetch one chunk of a published version over the control socket."""

    version: int
    index: int


@message("weights_chunk")
class WeightsChunk(Message):
    """One chunk of serialized weights; `data` is empty with `missing=True` when the version
    is no longer held (the generator then waits for the next announcement). The last chunk
    of a version carries its digest (needed when it was announced without one)."""

    version: int
    index: int
    data: NDArray[np.uint8]
    missing: bool = False
    digest: str = ""


@message("nccl_join")
class NcclJoin(Message):
    """Ask for a weight-update group for this generator's server (`world_size` = 1 + its
    tensor-parallel ranks); a generator that joins again gets a fresh group."""

    generator_id: str
    world_size: int


@message("nccl_group")
class NcclGroup(Message):
    """Where the group meets: the server joins it with rank offset 1 while the learner joins
    as rank 0. `error` says why none was made (no NCCL transport offered)."""

    address: str
    port: int
    group_name: str
    backend: str
    error: str = ""


@message("nccl_pull")
class NcclPull(Message):
    """Broadcast `version` into my group; the reply is an `NcclPlan`."""

    generator_id: str
    version: int
    group_name: str


@message("nccl_plan")
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


@message("finished")
class Finished(Message):
    """The learner's run reached its end normally (not a crash or a stop signal): published
    on the weights socket until the learner exits. Generators exit 0 on it; a learner that
    is gone without saying this is to be reconnected to."""

    version: int

"""Encode and decode wire messages as ZeroMQ multipart frames.

Frame 0 is a msgpack header: `{"v": schema, "t": type, "f": header fields, "a": [[name, dtype,
shape], ...]}`; each array listed in "a" follows as one raw frame, decoded with
`numpy.frombuffer` without copying. A header field declared as a pydantic model travels as a
map and is validated by that model (strict types, its bounds, extra keys refused). No pickle,
no msgpack ext types, explicit size limits: a hostile frame can cost at most the bytes it
occupies.

Every decoding failure raises `ProtocolError` with a short `reason` from `DECODE_REASONS`, which
the receiver uses as a metric label.
"""

from __future__ import annotations

import functools
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass

import msgpack
import numpy as np
from pydantic import BaseModel, ValidationError

from asyncrl.protocol import operator as _operator  # noqa: F401  (registers its messages)
from asyncrl.protocol.messages import MESSAGE_TYPES, SCHEMA_VERSION, Message

# Every reason `decode` (and `sockets.recv`) can give: a bounded label set, pre-created at 0.
DECODE_REASONS = ("frames", "header", "schema_version", "type", "field", "array", "oversize")


# Message types whose fields never change: decoded whatever schema their header names, so a
# peer of another release can still be told why it is refused.
FROZEN_TYPES = frozenset({"refused"})


class ProtocolError(ValueError):
    """A message that cannot be accepted; `reason` is a bounded metric label. `prefix`: the
    routing frames of the message, set by `sockets.recv_from` (a refusal can then be sent)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.prefix: list = []


class SchemaMismatch(ProtocolError):
    """A well-formed header of another wire schema: `schema` (None if not an int),
    `msg_type` and, for a `Hello` that names one, the sender's `release` (bounded text)."""

    def __init__(self, schema, msg_type: str, release: str):
        super().__init__("schema_version", repr(schema)[:32])
        self.schema = schema if isinstance(schema, int) and not isinstance(schema, bool) else None
        self.msg_type = msg_type
        self.release = release


@dataclass(frozen=True)
class DecodeLimits:
    """Upper bounds enforced before anything is allocated from untrusted sizes."""

    max_header_bytes: int = 64 * 1024
    max_frames: int = 16
    max_array_bytes: int = 256 * 1024 * 1024
    max_str_len: int = 4096
    max_list_len: int = 4096
    max_ndim: int = 2
    # Slack over the largest legitimate frame for ZeroMQ's per-frame limit (ZMQ_MAXMSGSIZE):
    # what a peer gets disconnected for must be clearly not a legitimate message.
    frame_headroom: int = 1 << 20

    @property
    def max_frame_bytes(self) -> int:
        """The largest frame worth receiving: no header or array frame may be larger."""
        return max(self.max_header_bytes, self.max_array_bytes) + self.frame_headroom


DEFAULT_LIMITS = DecodeLimits()
_DTYPES = {"int32", "float32", "uint8"}


def encode(msg: Message) -> list:
    """Return the multipart frames for `msg` (header bytes, then one buffer per array)."""
    schema = msg.SCHEMA
    header_fields = {name: getattr(msg, name) for name in schema.scalars}
    for name, model in schema.models.items():
        header_fields[name] = _dump_model(name, getattr(msg, name), model)
    arrays_meta = []
    frames: list = [None]
    for name, dtype in schema.arrays.items():
        value = getattr(msg, name)
        if value is None:
            continue
        arr = np.ascontiguousarray(value, dtype=dtype)
        arrays_meta.append([name, dtype, list(arr.shape)])
        # memoryview keeps zmq from copying large arrays into a bytes object.
        frames.append(memoryview(arr).cast("B") if arr.size else b"")
    header = {"v": SCHEMA_VERSION, "t": msg.TYPE, "f": header_fields, "a": arrays_meta}
    frames[0] = msgpack.packb(header, use_bin_type=True)
    return frames


def _dump_model(name: str, value, model: type[BaseModel]) -> dict:
    """The map for a model field. An instance of a subclass (the `sampling` config section for
    a lease's `SamplingParams`) sends only the declared model's fields: the receiver refuses
    extra keys."""
    if not isinstance(value, model):
        raise TypeError(f"{name} must be a {model.__name__}, not {type(value).__name__}")
    return value.model_dump(mode="json", include=set(model.model_fields))


def _refuse_ext(code, data):
    raise ProtocolError("header", "msgpack ext types are not accepted")


def _frame_bytes(frame) -> memoryview:
    """Accept zmq.Frame (copy=False), bytes or memoryview without copying."""
    buf = getattr(frame, "buffer", frame)
    return memoryview(buf)


def _check_scalar(name: str, value, types: tuple[type, ...]) -> None:
    # bool is a subclass of int: an int field must not silently accept True/False.
    if isinstance(value, bool) and bool not in types:
        raise ProtocolError("field", f"{name} has type bool")
    if not isinstance(value, types):
        raise ProtocolError("field", f"{name} has type {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ProtocolError("field", f"{name} is not finite")


# Element types of a list field whose annotation does not name one (`list`): the plain values
# msgpack carries, never nested containers. bool is refused unless declared (True is an int).
_ANY_ELEMENT = (int, str)


@functools.cache
def _element_types(cls: type[Message]) -> dict[str, tuple[type, ...]]:
    """List field -> the types its elements may have, read from the message's annotations
    (`list[str]` -> (str,)), so the checks follow the schema whatever element type it declares."""
    hints = typing.get_type_hints(cls)
    out = {}
    for name, accepted in cls.SCHEMA.scalars.items():
        if list not in accepted:
            continue
        args = typing.get_args(hints[name])
        elem = args[0] if len(args) == 1 and isinstance(args[0], type) else None
        if elem is float:
            out[name] = (float, int)
        elif elem in (int, str, bool):
            out[name] = (elem,)
        else:
            out[name] = _ANY_ELEMENT
    return out


def _check_elements(name: str, values: list, types: tuple[type, ...]) -> None:
    """Every element of a list field has a declared type: a str in `lease_ids: list[int]` (or an
    int in a list[str]) is refused here rather than breaking a handler later."""
    allow_bool = bool in types
    for i, x in enumerate(values):
        if (isinstance(x, bool) and not allow_bool) or not isinstance(x, types):
            raise ProtocolError("field", f"{name}[{i}] has type {type(x).__name__}")
        if isinstance(x, float) and not math.isfinite(x):
            raise ProtocolError("field", f"{name}[{i}] is not finite")


def _check_shape(name: str, shape, itemsize: int, nbytes: int, limits: DecodeLimits) -> tuple:
    """The declared shape of an array frame, checked before anything is allocated or reshaped:
    at most `max_ndim` plain non-negative ints, each within what `max_array_bytes` could hold
    (so a zero next to 2**40 is refused although the product is 0), and a product, bounded at
    every step, equal to the frame's bytes over the item size."""
    if not isinstance(shape, list) or len(shape) > limits.max_ndim:
        raise ProtocolError("array", f"{name} has a bad shape")
    cap = limits.max_array_bytes // itemsize
    count = 1
    for d in shape:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0 or d > cap:
            raise ProtocolError("array", f"{name} has a bad dimension")
        count *= d
        if count > cap:
            raise ProtocolError("array", f"{name} is larger than allowed")
    if count * itemsize != nbytes:
        raise ProtocolError("array", f"{name} size mismatch")
    return tuple(shape)


def _load_model(name: str, value, model: type[BaseModel]) -> BaseModel:
    """Validate a model field's map strictly: no coercion (a string is not a number), the
    model's bounds, no extra keys, and, as for every header float, finite numbers only."""
    if not isinstance(value, dict):
        raise ProtocolError("field", f"{name} has type {type(value).__name__}")
    for key, item in value.items():
        nested = item if isinstance(item, list) else [item]
        if any(isinstance(x, float) and not math.isfinite(x) for x in nested):
            raise ProtocolError("field", f"{name}.{key[:32]} is not finite")
    try:
        return model.model_validate(value, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])[:64]
        raise ProtocolError("field", f"{name}.{where}: {first['msg'][:96]}") from None


def _mismatch(header: dict) -> SchemaMismatch:
    t = header.get("t")
    fields = header.get("f")
    release = fields.get("release") if isinstance(fields, dict) else None
    return SchemaMismatch(
        header.get("v"),
        t[:32] if isinstance(t, str) else "",
        release[:64] if isinstance(release, str) else "unknown",
    )


def decode(frames: Sequence, limits: DecodeLimits = DEFAULT_LIMITS) -> Message:
    """Decode multipart frames into a message, validating structure and types.

    Semantic checks that need context (vocab size, token counts) live in `protocol.validate`.
    """
    if not frames or len(frames) > limits.max_frames:
        raise ProtocolError("frames", f"{len(frames) if frames else 0} frames")
    head = _frame_bytes(frames[0])
    if len(head) > limits.max_header_bytes:
        raise ProtocolError("header", "header too large")
    try:
        header = msgpack.unpackb(
            head,
            raw=False,
            use_list=True,
            strict_map_key=True,
            ext_hook=_refuse_ext,
            max_str_len=limits.max_str_len,
            max_bin_len=0,
            max_array_len=limits.max_list_len,
            max_map_len=64,
            max_ext_len=0,
        )
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types for garbage input
        raise ProtocolError("header", type(exc).__name__) from None
    if not isinstance(header, dict):
        raise ProtocolError("header", "not a map")
    if header.get("v") != SCHEMA_VERSION and header.get("t") not in FROZEN_TYPES:
        raise _mismatch(header)
    cls = MESSAGE_TYPES.get(header.get("t")) if isinstance(header.get("t"), str) else None
    if cls is None:
        raise ProtocolError("type", repr(header.get("t"))[:32])
    raw_fields = header.get("f")
    arrays_meta = header.get("a")
    if not isinstance(raw_fields, dict) or not isinstance(arrays_meta, list):
        raise ProtocolError("header", "missing f or a")

    schema = cls.SCHEMA
    kwargs = {}
    for name in schema.header_fields:
        if name not in raw_fields:
            if name in schema.optional:
                continue
            raise ProtocolError("field", f"missing {name}")
        value = raw_fields[name]
        if name in schema.models:
            kwargs[name] = _load_model(name, value, schema.models[name])
            continue
        _check_scalar(name, value, schema.scalars[name])
        if isinstance(value, list):
            _check_elements(name, value, _element_types(cls)[name])
        kwargs[name] = value
    if set(raw_fields).difference(schema.header_fields):
        raise ProtocolError("field", "unknown field")

    if len(arrays_meta) != len(frames) - 1:
        raise ProtocolError("frames", "array count does not match frames")
    for meta, frame in zip(arrays_meta, frames[1:]):
        if not (isinstance(meta, list) and len(meta) == 3):
            raise ProtocolError("array", "bad descriptor")
        name, dtype, shape = meta
        if not isinstance(name, str) or name not in schema.arrays or name in kwargs:
            raise ProtocolError("array", f"unexpected array {str(name)[:32]}")
        if dtype != schema.arrays[name] or dtype not in _DTYPES:
            raise ProtocolError("array", f"{name} has dtype {str(dtype)[:16]}")
        buf = _frame_bytes(frame)
        itemsize = np.dtype(dtype).itemsize
        shape = _check_shape(name, shape, itemsize, buf.nbytes, limits)
        kwargs[name] = np.frombuffer(buf, dtype=dtype).reshape(shape)
    for name in schema.arrays:
        if name not in kwargs and name not in schema.optional:
            raise ProtocolError("array", f"missing {name}")
    return cls(**kwargs)

"""Encode and decode wire messages as ZeroMQ multipart frames.

Frame 0 is a msgpack header: `{"v": schema, "t": type, "f": scalar fields, "a": [[name, dtype,
shape], ...]}`; each array listed in "a" follows as one raw frame, decoded with
`numpy.frombuffer` without copying. No pickle, no msgpack ext types, explicit size limits:
a hostile frame can cost at most the bytes it occupies.

Every decoding failure raises `ProtocolError` with a short, bounded `reason` that the receiver
uses as a metric label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import msgpack
import numpy as np

from asyncrl.protocol.messages import MESSAGE_TYPES, SCHEMA_VERSION, Message


class ProtocolError(ValueError):
    """A message that cannot be accepted; `reason` is a bounded metric label."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DecodeLimits:
    """Upper bounds enforced before anything is allocated from untrusted sizes."""

    max_header_bytes: int = 64 * 1024
    max_frames: int = 16
    max_array_bytes: int = 256 * 1024 * 1024
    max_str_len: int = 4096
    max_list_len: int = 4096
    max_ndim: int = 2


DEFAULT_LIMITS = DecodeLimits()
_DTYPES = {"int32", "float32", "uint8"}


def encode(msg: Message) -> list:
    """Return the multipart frames for `msg` (header bytes, then one buffer per array)."""
    header_fields = {}
    for name in msg.FIELDS:
        header_fields[name] = getattr(msg, name)
    arrays_meta = []
    frames: list = [None]
    for name, dtype in msg.ARRAYS.items():
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
    if header.get("v") != SCHEMA_VERSION:
        raise ProtocolError("schema_version", repr(header.get("v"))[:32])
    cls = MESSAGE_TYPES.get(header.get("t")) if isinstance(header.get("t"), str) else None
    if cls is None:
        raise ProtocolError("type", repr(header.get("t"))[:32])
    raw_fields = header.get("f")
    arrays_meta = header.get("a")
    if not isinstance(raw_fields, dict) or not isinstance(arrays_meta, list):
        raise ProtocolError("header", "missing f or a")

    kwargs = {}
    for name, types in cls.FIELDS.items():
        if name not in raw_fields:
            if _has_default(cls, name):
                continue
            raise ProtocolError("field", f"missing {name}")
        value = raw_fields[name]
        _check_scalar(name, value, types)
        if isinstance(value, list) and not all(isinstance(x, (int, str)) for x in value):
            raise ProtocolError("field", f"{name} has nested values")
        kwargs[name] = value
    if set(raw_fields) - set(cls.FIELDS):
        raise ProtocolError("field", "unknown field")

    if len(arrays_meta) != len(frames) - 1:
        raise ProtocolError("frames", "array count does not match frames")
    for meta, frame in zip(arrays_meta, frames[1:]):
        if not (isinstance(meta, list) and len(meta) == 3):
            raise ProtocolError("array", "bad descriptor")
        name, dtype, shape = meta
        if name not in cls.ARRAYS or name in kwargs:
            raise ProtocolError("array", f"unexpected array {str(name)[:32]}")
        if dtype != cls.ARRAYS[name] or dtype not in _DTYPES:
            raise ProtocolError("array", f"{name} has dtype {str(dtype)[:16]}")
        if (
            not isinstance(shape, list)
            or len(shape) > limits.max_ndim
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise ProtocolError("array", f"{name} has a bad shape")
        buf = _frame_bytes(frame)
        itemsize = np.dtype(dtype).itemsize
        expected = math.prod(shape) * itemsize
        if expected > limits.max_array_bytes or len(buf) != expected:
            raise ProtocolError("array", f"{name} size mismatch")
        kwargs[name] = np.frombuffer(buf, dtype=dtype).reshape(shape)
    for name in cls.ARRAYS:
        if name not in kwargs and not _has_default(cls, name):
            raise ProtocolError("array", f"missing {name}")
    return cls(**kwargs)


def _has_default(cls: type[Message], name: str) -> bool:
    from dataclasses import MISSING

    for f in fields(cls):
        if f.name == name:
            return f.default is not MISSING or f.default_factory is not MISSING
    return False

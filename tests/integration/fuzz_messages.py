"""Hypothesis strategies for hostile wire messages (test_fuzz.py): a valid instance of every
message type in `MESSAGE_TYPES`, built from each type's schema (a new message type is fuzzed
without touching this file), then mutated field by field, frame by frame and in the header."""

from __future__ import annotations

import typing

import msgpack
import numpy as np
from hypothesis import strategies as st

from asyncrl.protocol.codec import encode
from asyncrl.protocol.messages import MESSAGE_TYPES, SCHEMA_VERSION
from asyncrl.protocol.settings import SamplingParams

# ------------------------------------------------------------------ valid instances
_TYPES = sorted(MESSAGE_TYPES.values(), key=lambda c: c.TYPE)
_SMALL_INT = st.integers(-2, 12)
_WORD = st.sampled_from(["", "g0", "stop", "length", "bf16", "w", "gate"]) | st.text(max_size=6)


def _value(hint) -> st.SearchStrategy:
    """A plausible value for a field annotated `hint` (arrays: a short array of its dtype)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is np.ndarray or any(
        typing.get_origin(a) is np.ndarray for a in args
    ):
        arr = next(a for a in (hint, *args) if typing.get_origin(a) is np.ndarray)
        dtype = np.dtype(typing.get_args(typing.get_args(arr)[-1])[0])
        return st.integers(0, 6).map(lambda n: np.arange(n).astype(dtype))
    if isinstance(hint, type) and issubclass(hint, SamplingParams):
        return st.just(SamplingParams())
    origin = typing.get_origin(hint) or hint
    if origin is list:
        elem = args[0] if args else int
        return st.lists(_value(elem), max_size=4)
    return {
        int: _SMALL_INT,
        float: st.floats(0, 10),
        str: _WORD,
        bool: st.booleans(),
    }[origin]


def _valid(cls) -> st.SearchStrategy:
    hints = typing.get_type_hints(cls)
    fields = {name: _value(hints[name]) for name in cls.__dataclass_fields__}
    return st.fixed_dictionaries(fields).map(lambda kw: cls(**kw))


VALID = st.one_of(*(_valid(cls) for cls in _TYPES))


# ------------------------------------------------------------------ hostile values
_BIG = st.sampled_from([2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**64 - 1, -(2**63), -1, 0])
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    _BIG,
    st.floats(),  # nan and +-inf included
    st.text(max_size=40),
    st.binary(max_size=16),
)
HOSTILE = st.recursive(
    _SCALARS,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=4), kids, max_size=4)
    ),
    max_leaves=8,
)
_DEEP = "\x00deep\x00"  # packed, then replaced by raw nested arrays msgpack could not pack


def _pack(header) -> bytes:
    """Pack a header; a `_DEEP` marker becomes `depth` nested one-element arrays."""
    depth = header.pop("_depth", 0) if isinstance(header, dict) else 0
    raw = msgpack.packb(header, use_bin_type=True)
    if depth:
        raw = raw.replace(msgpack.packb(_DEEP), b"\x91" * depth + b"\x00", 1)
    return raw


MUTATIONS = (
    "none",
    "field_value",
    "list_element",
    "model_value",
    "missing_field",
    "extra_field",
    "deep",
    "array_dtype",
    "array_shape",
    "array_name",
    "frames_missing",
    "frames_extra",
    "frame_resize",
    "header_truncated",
    "header_garbage",
    "header_flipped",
    "schema_version",
    "type",
    "header_not_a_map",
)


@st.composite
def hostile_messages(draw) -> list[tuple[str, list[bytes]]]:
    """A valid message of any type and up to four mutants of it: [(mutation, frames)]."""
    frames = [bytes(f) for f in encode(draw(VALID))]
    kinds = draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=4))
    return [(kind, _mutate(draw, kind, list(frames))) for kind in kinds]


def _mutate(draw, kind: str, frames: list[bytes]) -> list[bytes]:
    header = msgpack.unpackb(frames[0], raw=False)
    f, a = header["f"], header["a"]
    if kind == "field_value" and f:
        f[draw(st.sampled_from(sorted(f)))] = draw(HOSTILE)
    elif kind == "list_element":
        lists = sorted(k for k, v in f.items() if isinstance(v, list))
        if lists:
            name = draw(st.sampled_from(lists))
            f[name].insert(draw(st.integers(0, len(f[name]))), draw(HOSTILE))
    elif kind == "model_value":
        maps = sorted(k for k, v in f.items() if isinstance(v, dict))
        if maps:
            m = f[draw(st.sampled_from(maps))]
            m[draw(st.sampled_from(sorted(m)) | st.text(max_size=8))] = draw(HOSTILE)
    elif kind == "missing_field" and f:
        del f[draw(st.sampled_from(sorted(f)))]
    elif kind == "extra_field":
        f[draw(st.text(max_size=12))] = draw(HOSTILE)
    elif kind == "deep":
        target = draw(st.sampled_from(sorted(f) or ["x"]))
        f[target] = _DEEP
        header["_depth"] = draw(st.integers(50, 5000))
    elif kind in ("array_dtype", "array_shape", "array_name"):
        if not a:  # give a message without arrays one it does not declare
            a.append(["tokens", "int32", [1]])
            frames.append(b"\0" * 4)
        d = a[draw(st.integers(0, len(a) - 1))]
        if kind == "array_dtype":
            d[1] = draw(
                st.sampled_from(["float64", "int64", "int8", "<i4", "object", "V8"]) | HOSTILE
            )
        elif kind == "array_shape":
            dims = st.integers(-(2**63), 2**64 - 1) | _BIG | st.integers(-2, 8)
            d[2] = draw(st.lists(dims, max_size=4) | HOSTILE)
        else:
            d[0] = draw(st.sampled_from(["prompt_ids", "data", "lengths", "x"]) | HOSTILE)
    elif kind == "frames_missing" and len(frames) > 1:
        del frames[draw(st.integers(1, len(frames) - 1))]
    elif kind == "frames_extra":
        frames += draw(st.lists(st.binary(max_size=32), min_size=1, max_size=30))
    elif kind == "frame_resize" and len(frames) > 1:
        i = draw(st.integers(1, len(frames) - 1))
        frames[i] = frames[i][: draw(st.integers(0, len(frames[i])))] + draw(st.binary(max_size=9))
    elif kind == "schema_version":
        header["v"] = draw(HOSTILE.filter(lambda v: v != SCHEMA_VERSION))
    elif kind == "type":
        header["t"] = draw(st.sampled_from(sorted(MESSAGE_TYPES)) | HOSTILE)
    elif kind == "header_not_a_map":
        header = draw(HOSTILE)
    if kind not in ("header_truncated", "header_garbage", "header_flipped"):
        frames[0] = _pack(header)
    elif kind == "header_truncated":
        frames[0] = frames[0][: draw(st.integers(0, len(frames[0]) - 1))]
    elif kind == "header_garbage":
        frames[0] = draw(st.binary(max_size=96))
    else:
        raw = bytearray(frames[0])
        for _ in range(draw(st.integers(1, 4))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        frames[0] = bytes(raw)
    return frames

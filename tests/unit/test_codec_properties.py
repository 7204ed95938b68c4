"""Property-based codec tests: every well-formed message survives a round trip, and no byte
string, however hostile, makes `decode` raise anything but `ProtocolError`."""

from __future__ import annotations

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncrl.protocol.codec import DecodeLimits, ProtocolError, decode, encode
from asyncrl.protocol.messages import (
    SCHEMA_VERSION,
    Heartbeat,
    Hello,
    Lease,
    LeaseDenied,
    LeaseRequest,
    RolloutGroup,
    WeightsAnnouncement,
    WeightsChunk,
    WeightsRequest,
)
from asyncrl.protocol.settings import SamplingParams

ints = st.integers(min_value=-(2**62), max_value=2**62)
small = st.integers(min_value=0, max_value=10_000)
names = st.text(max_size=64)
lease_ids = st.text("0123456789abcdef", min_size=32, max_size=32)
floats = st.floats(allow_nan=False, allow_infinity=False, width=64)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def rollout_groups(draw):
    lengths = draw(st.lists(st.integers(0, 40), min_size=1, max_size=8))
    total = sum(lengths)
    tokens = draw(st.lists(st.integers(0, 2**31 - 1), min_size=total, max_size=total))
    logprobs = draw(st.lists(st.floats(-50, 0, width=32), min_size=total, max_size=total))
    versions = draw(st.lists(st.integers(0, 10**6), min_size=total, max_size=total))
    baseline = draw(st.none() | st.lists(st.integers(0, 1000), max_size=10))
    return RolloutGroup(
        lease_id=draw(lease_ids),
        generator_id=draw(names),
        tokens=np.array(tokens, np.int32),
        logprobs=np.array(logprobs, np.float32),
        versions=np.array(versions, np.int32),
        lengths=np.array(lengths, np.int32),
        finish_reasons=draw(
            st.lists(
                st.sampled_from(["stop", "length", "abort"]),
                min_size=len(lengths),
                max_size=len(lengths),
            )
        ),
        generate_seconds=draw(st.floats(0, 1e6)),
        baseline_tokens=None if baseline is None else np.array(baseline, np.int32),
    )


messages = st.one_of(
    st.builds(Hello, names, names, ints),
    st.builds(LeaseRequest, names, ints),
    st.builds(Heartbeat, names, ints, st.lists(lease_ids, max_size=20), lease_ids),
    st.builds(LeaseDenied, st.sampled_from(["gate", "version", "exhausted"]), floats, ints),
    st.builds(
        Lease,
        lease_id=lease_ids,
        prompt_ids=st.lists(st.integers(0, 2**31 - 1), max_size=50).map(
            lambda x: np.array(x, np.int32)
        ),
        group_size=st.integers(1, 64),
        # Within SamplingParams' bounds: temperature > 0, 0 < top_p <= 1, max_new_tokens >= 1.
        sampling=st.builds(
            SamplingParams,
            temperature=st.floats(0, 1e6, exclude_min=True),
            top_p=st.floats(0, 1, exclude_min=True),
            top_k=small,
            max_new_tokens=st.integers(1, 10_000),
            # Stop strings: 1 to 256 characters each (SamplingParams.stop).
            stop=st.lists(st.text(min_size=1, max_size=64), max_size=4),
        ),
        deadline=floats,
        issued_version=ints,
        greedy_baseline=st.booleans(),
    ),
    st.builds(WeightsAnnouncement, small, names, small, small),
    st.builds(WeightsRequest, small, small),
    rollout_groups(),
)


def same(a, b) -> bool:
    if type(a) is not type(b):
        return False
    for k, v in vars(a).items():
        w = getattr(b, k)
        if isinstance(v, np.ndarray):
            if not (isinstance(w, np.ndarray) and v.dtype == w.dtype and np.array_equal(v, w)):
                return False
        elif v != w:
            return False
    return True


@SETTINGS
@given(messages)
def test_round_trip(msg):
    frames = [bytes(f) for f in encode(msg)]
    assert same(decode(frames), msg)


@SETTINGS
@given(st.lists(st.binary(max_size=512), min_size=0, max_size=6))
def test_random_frames_only_raise_protocol_error(frames):
    try:
        decode(frames)
    except ProtocolError:
        pass


@SETTINGS
@given(messages, st.data())
def test_mutated_frames_only_raise_protocol_error(msg, data):
    # Flip, drop or append bytes of a valid message: decode either accepts a message of a
    # known type or raises ProtocolError; nothing else escapes.
    frames = [bytearray(bytes(f)) for f in encode(msg)]
    i = data.draw(st.integers(0, len(frames) - 1))
    op = data.draw(st.sampled_from(["flip", "truncate", "extend", "drop_frame", "dup_frame"]))
    if op == "flip" and frames[i]:
        j = data.draw(st.integers(0, len(frames[i]) - 1))
        frames[i][j] ^= data.draw(st.integers(1, 255))
    elif op == "truncate":
        frames[i] = frames[i][: data.draw(st.integers(0, len(frames[i])))]
    elif op == "extend":
        frames[i] += data.draw(st.binary(min_size=1, max_size=16))
    elif op == "drop_frame":
        frames.pop(i)
    else:
        frames.insert(i, frames[i])
    try:
        out = decode([bytes(f) for f in frames])
    except ProtocolError:
        return
    assert type(out).TYPE


plain_values = st.recursive(
    st.none() | st.booleans() | ints | st.floats() | names,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(names, children, max_size=4),
    max_leaves=12,
)


@SETTINGS
@given(
    st.dictionaries(
        st.sampled_from(["temperature", "top_p", "top_k", "max_new_tokens", "stop"]) | names,
        plain_values,
        max_size=6,
    )
    | plain_values
)
def test_hostile_lease_sampling_only_raises_protocol_error(sampling):
    # Whatever a learner puts in a lease's sampling map (NaN and inf included), the generator's
    # decode returns a Lease whose settings are within SamplingParams' bounds, or refuses it.
    lease = Lease(1, np.zeros(2, np.int32), 2, SamplingParams(), 10.0, 0)
    frames = [bytes(f) for f in encode(lease)]
    header = msgpack.unpackb(frames[0], raw=False)
    header["f"]["sampling"] = sampling
    frames[0] = msgpack.packb(header, use_bin_type=True)
    try:
        out = decode(frames)
    except ProtocolError as exc:
        assert exc.reason == "field"
        return
    s = out.sampling
    assert 0 < s.temperature < float("inf") and 0 < s.top_p <= 1
    assert s.top_k >= 0 and s.max_new_tokens >= 1 and all(isinstance(x, str) for x in s.stop)
    assert len(s.stop) <= 32 and all(1 <= len(x) <= 256 for x in s.stop)


@SETTINGS
@given(
    st.recursive(
        st.none() | st.booleans() | ints | floats | names | st.binary(max_size=32),
        lambda children: (
            st.lists(children, max_size=5) | st.dictionaries(names, children, max_size=5)
        ),
        max_leaves=30,
    )
)
def test_arbitrary_msgpack_headers_only_raise_protocol_error(header):
    try:
        decode([msgpack.packb(header, use_bin_type=True)])
    except ProtocolError:
        pass


def test_declared_sizes_beyond_limits_are_refused_before_allocation():
    # A header claiming a 2^40-element array with a tiny frame must fail on the limit check.
    header = {
        "v": SCHEMA_VERSION,
        "t": "weights_chunk",
        "f": {"version": 1, "index": 0, "missing": False},
        "a": [["data", "uint8", [2**40]]],
    }
    frames = [msgpack.packb(header), b"x"]
    limits = DecodeLimits(max_array_bytes=1024)
    try:
        decode(frames, limits)
    except ProtocolError as exc:
        assert exc.reason
    else:  # pragma: no cover
        raise AssertionError("oversized declaration accepted")
    assert WeightsChunk  # the message type the header names exists

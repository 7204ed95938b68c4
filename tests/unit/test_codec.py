"""Codec round trips and rejection of malformed frames."""

import msgpack
import numpy as np
import pytest

from asyncrl.protocol.codec import DecodeLimits, ProtocolError, decode, encode
from asyncrl.protocol.messages import Lease, LeaseRequest, RolloutGroup, WeightsChunk


def _group(**kw):
    base = dict(
        lease_id=7,
        generator_id="g0",
        tokens=np.array([5, 6, 2, 9, 2], np.int32),
        logprobs=np.array([-0.1, -0.2, -0.3, -1.0, -0.5], np.float32),
        versions=np.array([3, 3, 4, 4, 4], np.int32),
        lengths=np.array([3, 2], np.int32),
        finish_reasons=["stop", "stop"],
        generate_seconds=0.25,
    )
    base.update(kw)
    return RolloutGroup(**base)


def _frames(msg):
    return [bytes(f) for f in encode(msg)]


def test_rollout_round_trip_keeps_arrays_and_fields():
    msg = _group()
    out = decode(_frames(msg))
    assert isinstance(out, RolloutGroup)
    assert out.lease_id == 7 and out.generator_id == "g0"
    np.testing.assert_array_equal(out.tokens, msg.tokens)
    np.testing.assert_array_equal(out.logprobs, msg.logprobs)
    assert out.baseline_tokens is None
    # Slices from lengths [3, 2]: sample 0 = tokens[0:3], sample 1 = tokens[3:5].
    assert out.sample_slices() == [slice(0, 3), slice(3, 5)]
    # Group version = oldest token's version = min(3,3,4,4,4) = 3.
    assert out.version == 3


def test_scalar_only_message_round_trip():
    out = decode(_frames(LeaseRequest("gen-1", 12)))
    assert out == LeaseRequest("gen-1", 12)


def test_lease_round_trip_with_defaults():
    lease = Lease(1, np.array([1, 2, 3], np.int32), 8, 1.0, 1.0, 0, 16, 123.5, 2)
    out = decode(_frames(lease))
    assert out.greedy_baseline is False
    np.testing.assert_array_equal(out.prompt_ids, [1, 2, 3])


def test_empty_array_round_trip():
    out = decode(_frames(WeightsChunk(1, 0, np.zeros(0, np.uint8), missing=True)))
    assert out.missing and out.data.size == 0


def _tamper(msg, fn):
    frames = _frames(msg)
    header = msgpack.unpackb(frames[0], raw=False)
    fn(header, frames)
    frames[0] = msgpack.packb(header, use_bin_type=True)
    return frames


@pytest.mark.parametrize(
    "mutate,reason",
    [
        (lambda h, f: h.update(v=99), "schema_version"),
        (lambda h, f: h.update(t="bogus"), "type"),
        (lambda h, f: h["f"].update(lease_id="7"), "field"),
        (lambda h, f: h["f"].update(lease_id=True), "field"),
        (lambda h, f: h["f"].update(generate_seconds=float("nan")), "field"),
        (lambda h, f: h["f"].pop("lease_id"), "field"),
        (lambda h, f: h["f"].update(extra=1), "field"),
        (lambda h, f: h["a"][0].__setitem__(1, "float64"), "array"),
        (lambda h, f: h["a"][0].__setitem__(2, [6]), "array"),
        (lambda h, f: h["a"][0].__setitem__(2, [-1]), "array"),
        (lambda h, f: h["a"].pop(), "frames"),
    ],
)
def test_malformed_headers_are_rejected_with_reason(mutate, reason):
    frames = _tamper(_group(), mutate)
    with pytest.raises(ProtocolError) as exc:
        decode(frames)
    assert exc.value.reason == reason


def test_garbage_and_limits():
    with pytest.raises(ProtocolError, match="header"):
        decode([b"\xc1\xff\x00"])
    with pytest.raises(ProtocolError, match="frames"):
        decode([])
    with pytest.raises(ProtocolError, match="frames"):
        decode([b"x"] * 100)
    # An ext type (code 5) must be refused, never handed to a hook that builds objects.
    ext = msgpack.packb(msgpack.ExtType(5, b"boom"))
    with pytest.raises(ProtocolError, match="header"):
        decode([ext])
    big = _frames(_group())
    with pytest.raises(ProtocolError, match="array"):
        decode(big, DecodeLimits(max_array_bytes=8))
    with pytest.raises(ProtocolError, match="header"):
        decode(big, DecodeLimits(max_header_bytes=10))

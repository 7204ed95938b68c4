"""Codec round trips and rejection of malformed frames."""

import msgpack
import numpy as np
import pytest

from asyncrl.protocol.codec import DecodeLimits, ProtocolError, decode, encode
from asyncrl.protocol.messages import (
    MESSAGE_TYPES,
    Lease,
    LeaseRequest,
    Message,
    RolloutGroup,
    WeightsChunk,
    message,
)
from asyncrl.protocol.settings import SamplingConfig, SamplingParams


def _group(**kw):
    base = dict(
        lease_id="7" * 32,
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
    assert out.lease_id == "7" * 32 and out.generator_id == "g0"
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


def _lease(**kw):
    base = dict(
        lease_id="1" * 32,
        prompt_ids=np.array([1, 2, 3], np.int32),
        group_size=8,
        sampling=SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=16),
        deadline=123.5,
        issued_version=2,
    )
    base.update(kw)
    return Lease(**base)


def test_lease_round_trip_with_defaults():
    out = decode(_frames(_lease()))
    assert out.greedy_baseline is False
    np.testing.assert_array_equal(out.prompt_ids, [1, 2, 3])


def test_lease_sampling_round_trip():
    sampling = SamplingParams(temperature=0.7, top_p=0.9, top_k=5, max_new_tokens=3, stop=["\n"])
    out = decode(_frames(_lease(sampling=sampling)))
    assert isinstance(out.sampling, SamplingParams) and out.sampling == sampling
    # The config section is a SamplingParams plus group_size: a lease built from it carries
    # only the five per-request settings, so the receiver's extra-key check still holds.
    section = SamplingConfig(group_size=4, temperature=0.5)
    frames = _frames(_lease(sampling=section))
    sent = msgpack.unpackb(frames[0], raw=False)["f"]["sampling"]
    assert sorted(sent) == ["max_new_tokens", "stop", "temperature", "top_k", "top_p"]
    assert decode(frames).sampling == SamplingParams(temperature=0.5)
    with pytest.raises(TypeError, match="sampling must be a SamplingParams"):
        encode(_lease(sampling={"temperature": 1.0}))


def _set_sampling(**values):
    def mutate(header, frames):
        header["f"]["sampling"].update(values)

    return mutate


@pytest.mark.parametrize(
    "mutate,detail",
    [
        # Bounds of SamplingParams: temperature > 0, 0 < top_p <= 1, top_k >= 0, max_new >= 1.
        (_set_sampling(temperature=0.0), "sampling.temperature"),
        (_set_sampling(top_p=1.5), "sampling.top_p"),
        (_set_sampling(top_k=-1), "sampling.top_k"),
        (_set_sampling(max_new_tokens=0), "sampling.max_new_tokens"),
        # Strict types: no coercion of strings, floats or bools into numbers.
        (_set_sampling(max_new_tokens="16"), "sampling.max_new_tokens"),
        (_set_sampling(top_k=2.0), "sampling.top_k"),
        (_set_sampling(temperature=True), "sampling.temperature"),
        (_set_sampling(stop=[1]), "sampling.stop.0"),
        (_set_sampling(stop="\n"), "sampling.stop"),
        # Stop strings ride in every lease header: at most 32, each 1 to 256 characters.
        (_set_sampling(stop=["x"] * 33), "sampling.stop"),
        (_set_sampling(stop=["x" * 257]), "sampling.stop.0"),
        (_set_sampling(stop=[""]), "sampling.stop.0"),
        # Non-finite numbers pass `gt=0` in pydantic; the codec refuses them like any float.
        (_set_sampling(temperature=float("inf")), "sampling.temperature is not finite"),
        (_set_sampling(top_p=float("nan")), "sampling.top_p is not finite"),
        # Extra keys are refused, as on the message itself (a newer sender must bump the schema).
        (_set_sampling(group_size=8), "sampling.group_size"),
        (lambda h, f: h["f"].update(sampling=[1.0, 1.0]), "sampling has type list"),
        (lambda h, f: h["f"].pop("sampling"), "missing sampling"),
    ],
)
def test_hostile_sampling_values_are_a_protocol_error(mutate, detail):
    frames = _tamper(_lease(), mutate)
    with pytest.raises(ProtocolError) as exc:
        decode(frames)
    assert exc.value.reason == "field"
    assert exc.value.detail.startswith(detail)


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
        (lambda h, f: h["f"].update(lease_id=7), "field"),
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


def test_schema_is_derived_from_the_annotations():
    # RolloutGroup declares lease_id: str, generator_id: str, four NDArray fields,
    # finish_reasons: list[str], generate_seconds: float, and three optional arrays:
    # baseline_tokens (int32), loss_mask (uint8), env_rewards (float32), each `| None = None`.
    schema = RolloutGroup.SCHEMA
    assert schema.scalars == {
        "lease_id": (str,),
        "generator_id": (str,),
        "finish_reasons": (list,),
        "generate_seconds": (float, int),
    }
    assert schema.arrays == {
        "tokens": "int32",
        "logprobs": "float32",
        "versions": "int32",
        "lengths": "int32",
        "baseline_tokens": "int32",
        "loss_mask": "uint8",
        "env_rewards": "float32",
    }
    assert schema.models == {}
    assert schema.optional == {"baseline_tokens", "loss_mask", "env_rewards"}
    assert Lease.SCHEMA.models == {"sampling": SamplingParams}
    assert Lease.SCHEMA.arrays == {"prompt_ids": "int32"}
    assert Lease.SCHEMA.optional == {"greedy_baseline"}
    assert WeightsChunk.SCHEMA.arrays == {"data": "uint8"}


def test_a_field_without_wire_form_or_a_second_type_name_fails_at_declaration():
    with pytest.raises(TypeError, match="Odd.mapping: no wire form"):

        @message("odd")
        class Odd(Message):
            mapping: dict[str, int]

    with pytest.raises(TypeError, match="'lease' is declared twice"):

        @message("lease")
        class Twice(Message):
            n: int

    assert "odd" not in MESSAGE_TYPES and MESSAGE_TYPES["lease"] is Lease

"""The codec's element and shape checks, and the receive path's frame limits, each on a
hand-built message: every hostile value must end as a ProtocolError with its reason, never as
another exception (which, raised in a hub handler, used to stop the hub)."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zmq

from asyncrl.protocol.codec import DEFAULT_LIMITS, DecodeLimits, ProtocolError, decode, encode
from asyncrl.protocol.messages import (
    SCHEMA_VERSION,
    Heartbeat,
    LeaseReturn,
    NcclPlan,
    RolloutGroup,
)
from asyncrl.protocol.sockets import (
    CONTROL_LIMITS,
    ReceiveLimits,
    SocketFactory,
    learner_receive_limits,
    recv,
    rollout_limits,
    send,
)

# Lease ids are whatever the schema declares (int, or a 32-hex-char str): build valid ones and
# wrong ones from the declaration so these cases hold for either.
_ID_TYPE = RolloutGroup.SCHEMA.scalars["lease_id"][0]
LEASE_ID = "0123456789abcdef0123456789abcdef" if _ID_TYPE is str else 7
WRONG_ID = 7 if _ID_TYPE is str else "7"


def _header(t: str, fields: dict, arrays: list | None = None) -> bytes:
    return msgpack.packb(
        {"v": SCHEMA_VERSION, "t": t, "f": fields, "a": arrays or []}, use_bin_type=True
    )


def _reason(frames, limits: DecodeLimits = DEFAULT_LIMITS) -> str:
    with pytest.raises(ProtocolError) as exc:
        decode(frames, limits)
    return exc.value.reason


def test_the_65_byte_heartbeat_with_a_wrongly_typed_lease_id_is_a_field_error():
    # The message of the issue: {"v": 2, "t": "heartbeat", "f": {"generator_id": "mallory",
    # "version": 0, "lease_ids": [<one id of the wrong type>]}, "a": []}. With an int schema
    # the id is "7": map(4)=1 + "v"2 + 2=1 + "t"2 + "heartbeat"10 + "f"2 + map(3)1 +
    # "generator_id"13 + "mallory"8 + "version"8 + 0=1 + "lease_ids"10 + array(1)1 + "7"2 +
    # "a"2 + array(0)1 = 65 bytes.
    fields = {"generator_id": "mallory", "version": 0, "lease_ids": [WRONG_ID]}
    head = _header("heartbeat", fields)
    if _ID_TYPE is int:
        assert len(head) == 65
    assert _reason([head]) == "field"


@pytest.mark.parametrize("bad", [True, False, 1.5, None, [1], {"a": 1}, float("nan")], ids=repr)
@pytest.mark.parametrize("cls", [Heartbeat, LeaseReturn])
def test_lease_id_lists_hold_only_their_declared_type(cls, bad):
    # bool, float, None, a list or a map is wrong whatever the element type (int or str).
    fields = {"generator_id": "g", "lease_ids": [LEASE_ID, bad]}
    if cls is Heartbeat:
        fields["version"] = 0
    with pytest.raises(ProtocolError) as exc:
        decode([_header(cls.TYPE, fields)])
    assert exc.value.reason == "field"
    assert exc.value.detail.startswith("lease_ids[1] has type") or "not finite" in exc.value.detail


def test_valid_lease_id_lists_still_decode():
    out = decode(encode(Heartbeat("g", 3, [LEASE_ID, LEASE_ID])))
    assert out.lease_ids == [LEASE_ID, LEASE_ID]
    assert decode(encode(LeaseReturn("g", []))).lease_ids == []


def test_list_of_str_refuses_ints_and_untyped_lists_refuse_bools_floats_and_nesting():
    group = encode(
        RolloutGroup(
            LEASE_ID,
            "g",
            np.zeros(0, np.int32),
            np.zeros(0, np.float32),
            np.zeros(0, np.int32),
            np.zeros(2, np.int32),
            ["stop", "stop"],
            0.1,
        )
    )
    header = msgpack.unpackb(group[0], raw=False)
    header["f"]["finish_reasons"] = ["stop", 1]
    assert _reason([msgpack.packb(header), *group[1:]]) == "field"
    # NcclPlan's bare `list` fields take ints and strs (names, dims), nothing else.
    ok = NcclPlan(1, "d", names=["w"], dtypes=["bf16"], ranks=[1], dims=[4], counts=[1])
    assert decode(encode(ok)) == ok
    for bad in (True, 1.5, [4], None):
        frames = encode(NcclPlan(1, "d", dims=[4, bad]))
        assert _reason(frames) == "field", bad


def _tokens_frames(shape, payload: bytes) -> list:
    """A RolloutGroup whose `tokens` array claims `shape` over `payload`."""
    frames = encode(
        RolloutGroup(
            LEASE_ID,
            "g",
            np.zeros(1, np.int32),
            np.zeros(1, np.float32),
            np.zeros(1, np.int32),
            np.ones(1, np.int32),
            ["stop"],
            0.1,
        )
    )
    header = msgpack.unpackb(frames[0], raw=False)
    assert header["a"][0][0] == "tokens"
    header["a"][0][2] = shape
    return [msgpack.packb(header), payload, *frames[2:]]


@pytest.mark.parametrize(
    "shape,payload",
    [
        ([0, 2**40], b""),  # product 0 = len(b""), but 2**40 int32 is past any array's cap
        ([2**40, 0], b""),
        ([2**64 - 1], b""),  # msgpack's largest uint
        ([-1], b""),
        ([True], b"\0" * 4),  # bool is not a dimension
        ([1.0], b"\0" * 4),
        (["1"], b"\0" * 4),
        ([2, 2**62], b"\0" * 8),  # each dim under 2**64, product overflows int64
        ([1, 1, 1], b"\0" * 4),  # ndim 3 > max_ndim 2
        ([2], b"\0" * 4),  # 2 int32 = 8 bytes, frame has 4
        ([1], b"\0" * 5),
        ("abc", b""),
        ({"a": 1}, b""),
    ],
    ids=repr,
)
def test_array_shapes_are_checked_before_anything_is_reshaped(shape, payload):
    assert _reason(_tokens_frames(shape, payload)) == "array"


def test_a_shape_within_the_caps_decodes_and_the_cap_is_per_dimension():
    # 3 int32 = 12 bytes.
    out = decode(_tokens_frames([3], b"\0" * 12))
    assert out.tokens.shape == (3,)
    # max_array_bytes 16 -> at most 4 int32 per dimension: [0, 5] is refused, [0, 4] is fine.
    limits = DecodeLimits(max_array_bytes=16)
    assert _reason(_tokens_frames([0, 5], b""), limits) == "array"
    assert decode(_tokens_frames([0, 4], b""), limits).tokens.shape == (0, 4)


def test_an_array_descriptor_with_an_unhashable_name_is_an_array_error():
    frames = _tokens_frames([1], b"\0" * 4)
    header = msgpack.unpackb(frames[0], raw=False)
    header["a"][0][0] = ["tokens"]
    assert _reason([msgpack.packb(header), *frames[1:]]) == "array"


def test_frame_limits_derive_from_the_configured_maxima():
    # Frame cap = max(header 64 KiB, arrays) + 1 MiB headroom.
    assert DecodeLimits(max_array_bytes=100, frame_headroom=5).max_frame_bytes == 64 * 1024 + 5
    # G=16 samples of up to 4096 tokens, 4 bytes each: the tokens array is 256 KiB at most.
    lim = rollout_limits(16, 4096)
    assert lim.decode.max_array_bytes == 16 * 4096 * 4 == 262_144
    assert lim.decode.max_frame_bytes == 262_144 + 2**20
    # G=64 x 32768 tokens x 4 = 8 MiB.
    assert rollout_limits(64, 32768).decode.max_frame_bytes == 8 * 2**20 + 2**20
    assert learner_receive_limits(16, 4096) == {"control": CONTROL_LIMITS, "rollouts": lim}
    f = SocketFactory(linger_ms=0)
    sock = f.socket(zmq.PULL, server=True, receive=lim)
    try:
        assert sock.getsockopt(zmq.MAXMSGSIZE) == lim.decode.max_frame_bytes
        assert sock.getsockopt(zmq.RCVHWM) == 4
    finally:
        sock.close(0)


@pytest.fixture()
def pair():
    """A PUSH -> PULL pair on loopback (the rollouts socket's shape)."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    yield push, pull
    push.close(0)
    pull.close(0)
    ctx.term()


def _recv(pull, limits: DecodeLimits = DEFAULT_LIMITS):
    assert pull.poll(5000)
    return recv(pull, limits)


def test_recv_drains_a_message_with_too_many_frames_and_the_next_one_decodes(pair):
    push, pull = pair
    push.send_multipart([b"x"] * 20)  # 20 frames > max_frames 16
    send(push, Heartbeat("g", 1, []))
    with pytest.raises(ProtocolError) as exc:
        _recv(pull)
    assert exc.value.reason == "frames" and "too many" in str(exc.value)
    assert _recv(pull)[1] == Heartbeat("g", 1, [])


def test_recv_drops_an_oversize_frame_and_the_next_message_decodes(pair):
    push, pull = pair
    limits = DecodeLimits(max_header_bytes=128, max_array_bytes=128, frame_headroom=0)
    frames = encode(Heartbeat("g", 1, []))
    push.send_multipart([*frames, b"\0" * 129])  # a 129-byte frame > cap 128
    push.send_multipart([b"\0" * 129])  # the first frame too
    send(push, Heartbeat("g", 2, []))
    for _ in range(2):
        with pytest.raises(ProtocolError) as exc:
            _recv(pull, limits)
        assert exc.value.reason == "oversize"
    assert _recv(pull, limits)[1] == Heartbeat("g", 2, [])


def test_routed_recv_allows_the_routing_frame_on_top_of_the_protocols_count():
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    try:
        limits = DecodeLimits(max_frames=2)
        send(dealer, Heartbeat("g", 1, []))  # 1 frame (+ identity)
        dealer.send_multipart([b"a", b"b", b"c"])  # 3 frames > 2
        assert router.poll(5000)
        prefix, msg = recv(router, limits, routed=True)
        assert len(prefix) == 1 and msg == Heartbeat("g", 1, [])
        assert router.poll(5000)
        with pytest.raises(ProtocolError, match="frames"):
            recv(router, limits, routed=True)
    finally:
        dealer.close(0)
        router.close(0)
        ctx.term()


def test_receive_limits_default_keeps_the_factory_size():
    f = SocketFactory(linger_ms=0, max_message_bytes=12345)
    sock = f.socket(zmq.PULL, server=True)
    try:
        assert sock.getsockopt(zmq.MAXMSGSIZE) == 12345
    finally:
        sock.close(0)
    assert ReceiveLimits().hwm == 1000

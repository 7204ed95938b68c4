"""Weight serialisation and the generator-side chunk assembly."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
import zmq
from safetensors.torch import load

from asyncrl.generators.weights import (
    ChunkAssembler,
    WeightsError,
    decode_safetensors,
    verify_and_decode,
)
from asyncrl.learner.weights import WeightsStore, serialize_named_tensors
from asyncrl.protocol.blob import digest_of
from asyncrl.protocol.codec import encode
from asyncrl.protocol.messages import WeightsRequest
from asyncrl.protocol.sockets import recv


@contextmanager
def inproc_pair(bound: int, connected: int):
    """Two sockets on a private context over inproc (no ports, nothing left behind)."""
    ctx = zmq.Context()
    a, b = ctx.socket(bound), ctx.socket(connected)
    a.bind("inproc://weights")
    b.connect("inproc://weights")
    try:
        yield a, b
    finally:
        a.close(0)
        b.close(0)
        ctx.term()


def ask(store: WeightsStore, router, dealer, version: int, index: int) -> int:
    """Request chunk `index` of `version` over the pair and let the store answer it."""
    dealer.send_multipart(encode(WeightsRequest(version, index)))
    prefix, req = recv(router, routed=True)
    return store.serve(router, prefix, req)


def tensors():
    torch.manual_seed(0)
    return {
        "a.weight": torch.randn(3, 5),
        "b.bias": torch.randn(7).to(torch.bfloat16),
        "c.ids": torch.arange(4, dtype=torch.int64),
        "d.empty": torch.zeros(0, 3),
        "e.half": torch.randn(2, 2).half(),
    }


def test_serialisation_is_standard_safetensors():
    blob = serialize_named_tensors(tensors())
    # The reference implementation reads it, and so does our zero-copy decoder.
    for decoded in (load(bytes(blob)), decode_safetensors(blob)):
        for name, t in tensors().items():
            assert decoded[name].dtype == t.dtype and torch.equal(decoded[name], t), name
    # The data section starts 8-byte aligned.
    header_len = int.from_bytes(blob[:8], "little")
    assert (8 + header_len) % 8 == 0


def test_snapshot_does_not_alias_the_source():
    src = {"w": torch.zeros(4)}
    blob = serialize_named_tensors(src)
    src["w"] += 1  # training goes on after publishing
    assert torch.equal(decode_safetensors(blob)["w"], torch.zeros(4))


def chunks_of(blob, chunk_bytes):
    pub = WeightsStore(chunk_bytes).put(1, blob)
    return pub, [bytes(pub.chunk(i)) for i in range(pub.chunks)]


def test_assembler_in_and_out_of_order():
    blob = serialize_named_tensors(tensors())
    pub, parts = chunks_of(blob, 16)
    for order in (range(len(parts)), reversed(range(len(parts)))):
        asm = ChunkAssembler(len(blob), len(parts))
        for i in order:
            asm.add(i, parts[i])
        out = asm.finish(pub.digest)
        assert bytes(out) == bytes(blob)
        # verify_and_decode trusts the digest checked on arrival.
        assert torch.equal(verify_and_decode(out, pub.digest)["a.weight"], tensors()["a.weight"])


def test_assembler_rejects_corruption_and_short_input():
    blob = serialize_named_tensors(tensors())
    pub, parts = chunks_of(blob, 16)
    asm = ChunkAssembler(len(blob), len(parts))
    for i, p in enumerate(parts):
        asm.add(i, p if i != 2 else b"\x00" * len(p))
    with pytest.raises(WeightsError, match="digest"):
        asm.finish(pub.digest)
    asm = ChunkAssembler(len(blob), len(parts))
    asm.add(0, parts[0])
    with pytest.raises(WeightsError, match="announced"):
        asm.finish(pub.digest)
    with pytest.raises(WeightsError, match="digest"):
        verify_and_decode(bytearray(blob), digest_of(b"something else"))


def test_serialising_into_a_reused_buffer_equals_a_fresh_one():
    first = serialize_named_tensors({"w": torch.zeros(6)})
    second = serialize_named_tensors({"w": torch.arange(6.0)}, reuse=first)
    assert second is first  # written over, not reallocated
    fresh = serialize_named_tensors({"w": torch.arange(6.0)})
    assert bytes(second) == bytes(fresh) and second.digest == fresh.digest == digest_of(fresh)
    # A buffer of another size is not used.
    assert serialize_named_tensors({"w": torch.zeros(7)}, reuse=first) is not first


def test_a_retired_blob_is_reused_only_once_no_send_reads_it():
    import numpy as np

    from asyncrl.protocol.messages import WeightsChunk
    from asyncrl.protocol.sockets import send

    # inproc hands the message itself to the receiver: it stays alive (and the tracker
    # pending) until the receiver drops it, which is the window a reused blob must avoid.
    # Chunks are above pyzmq's copy threshold (64 KiB; smaller frames are copied at send).
    with inproc_pair(zmq.PUSH, zmq.PULL) as (push, pull):
        store = WeightsStore(chunk_bytes=128 << 10)
        blobs = [serialize_named_tensors({"w": torch.full((1 << 16,), float(v))}) for v in range(3)]
        pub1 = store.put(1, blobs[0])
        data = np.frombuffer(pub1.chunk(0), np.uint8)
        pub1.sent(send(push, WeightsChunk(1, 0, data), track=True))
        del data
        store.put(2, blobs[1])
        assert store.spare() is None  # v1 is still served as the previous version
        store.put(3, blobs[2])
        assert store.get(1) is None
        assert store.spare() is None  # retired, but its chunk is still in flight
        frames = pull.recv_multipart(copy=False)
        del frames  # the receiver is done with it
        pub1.sends[0].wait(5)
        assert store.spare() is blobs[0]
        assert store.spare() is None  # handed out once


def test_assembling_into_a_reused_buffer_checks_the_new_digest():
    old = serialize_named_tensors({"w": torch.zeros(40)})
    pub_old, parts_old = chunks_of(old, 64)
    asm = ChunkAssembler(len(old), len(parts_old))
    for i, p in enumerate(parts_old):
        asm.add(i, p)
    buf = asm.finish(pub_old.digest)

    new = serialize_named_tensors({"w": torch.ones(40)})
    pub_new, parts_new = chunks_of(new, 64)
    asm = ChunkAssembler(len(new), len(parts_new), reuse=buf)
    assert asm.buf is buf
    for i, p in enumerate(parts_new):
        asm.add(i, p)
    out = asm.finish(pub_new.digest)
    assert out is buf and torch.equal(verify_and_decode(out, pub_new.digest)["w"], torch.ones(40))
    # A reused buffer forgets the digest it carried: one left with a chunk of the old version
    # is not trusted.
    asm = ChunkAssembler(len(new), len(parts_new), reuse=out)
    for i in range(3):
        asm.add(i, parts_new[i] if i != 2 else parts_old[i])
    with pytest.raises(WeightsError, match="digest"):
        verify_and_decode(asm.buf, pub_new.digest)


def test_blob_writer_takes_tensors_in_layout_order_only():
    # The running hash covers the blob front to back, so tensors come in layout order.
    from asyncrl.learner.weights import BlobWriter

    specs = {"a": ((2,), torch.float32), "b": ((3,), torch.bfloat16)}
    with pytest.raises(ValueError, match="expects a next"):
        BlobWriter(specs).write("b", torch.zeros(3, dtype=torch.bfloat16))
    w = BlobWriter(specs)
    w.write("a", torch.zeros(2))
    with pytest.raises(ValueError, match="not its layout"):
        w.write("b", torch.zeros(3))  # float32, not bfloat16
    w = BlobWriter(specs)
    w.write("a", torch.zeros(2))
    with pytest.raises(ValueError, match="b was never written"):
        w.finish()
    w = BlobWriter(specs)
    w.write("a", torch.ones(2))
    w.write("b", torch.ones(3, dtype=torch.bfloat16))
    blob = w.finish()
    assert blob.digest == digest_of(bytes(blob))
    assert torch.equal(decode_safetensors(blob)["b"], torch.ones(3, dtype=torch.bfloat16))


def test_copy_and_hash_in_pieces_equals_one_pass():
    # 2.5 pieces of 256 KiB: the last piece is partial; the digest must equal one pass over
    # the same bytes, and the copy must be exact.
    from asyncrl.protocol.blob import Checksum

    src = torch.randint(0, 256, ((5 << 20) // 2 // 4 + 3,), dtype=torch.uint8).numpy()
    dst = bytearray(src.nbytes)
    c = Checksum()
    c.copy(memoryview(dst), src)
    assert bytes(dst) == src.tobytes() and c.hexdigest() == digest_of(src.tobytes())
    with pytest.raises(ValueError, match="copy of"):
        c.copy(memoryview(dst)[1:], src)


def test_digest_written_with_the_blob_is_the_digest_of_its_bytes():
    # Large (several pieces), strided (torch's copy path) and bf16 tensors alike.
    torch.manual_seed(0)
    state = {
        "big": torch.randn(300_000),
        "strided": torch.randn(64, 32).t(),
        "bf16": torch.randn(1000, 3).to(torch.bfloat16),
    }
    blob = serialize_named_tensors(state)
    assert blob.digest == digest_of(bytes(blob))
    for name, t in load(bytes(blob)).items():
        assert torch.equal(t, state[name]), name


def test_a_streamed_version_is_served_as_it_is_written():
    from asyncrl.learner.weights import BlobWriter

    # Three 256-byte tensors (64 fp32 each) behind a header of H < 256 bytes; chunks of 256
    # bytes. Chunk 0 (bytes 0..255) is final once "a" is written (it ends at H + 256); the
    # last chunk is held until the digest is known, and carries it.
    with inproc_pair(zmq.ROUTER, zmq.DEALER) as (router, dealer):
        state = {k: torch.full((64,), float(i)) for i, k in enumerate("abc")}
        store = WeightsStore(chunk_bytes=256)
        writer = BlobWriter({k: ((64,), torch.float32) for k in state})
        assert writer.base < 256
        pub = store.begin(7, writer)
        n = pub.chunks

        def answered():
            return [recv(dealer)[1]] if dealer.poll(100) else []

        assert ask(store, router, dealer, 7, 0) == 0 and store.deferred and answered() == []
        writer.write("a", state["a"])
        assert store.serve_deferred(router) == 256
        (first,) = answered()
        assert first.index == 0 and first.digest == "" and not store.deferred
        assert ask(store, router, dealer, 7, n - 1) == 0
        writer.write("b", state["b"])
        writer.write("c", state["c"])
        assert store.serve_deferred(router) == 0  # written, but the digest is not known yet
        blob = writer.finish()
        store.complete(pub)
        assert store.serve_deferred(router) > 0
        (last,) = answered()
        assert last.index == n - 1 and last.digest == blob.digest == digest_of(bytes(blob))
        asm = ChunkAssembler(len(blob), n)
        for i in range(n):
            asm.add(i, bytes(pub.chunk(i)))
        assert torch.equal(verify_and_decode(asm.finish(last.digest), last.digest)["c"], state["c"])


def test_requests_for_a_superseded_stream_are_answered_missing():
    from asyncrl.learner.weights import BlobWriter

    with inproc_pair(zmq.ROUTER, zmq.DEALER) as (router, dealer):
        store = WeightsStore(chunk_bytes=64)
        spec = {"w": ((64,), torch.float32)}
        store.begin(1, BlobWriter(spec))
        # Chunk 1: chunk 0 is all header.
        assert ask(store, router, dealer, 1, 1) == 0 and store.deferred
        # Two newer versions: version 1 is no longer held, its held request goes `missing`.
        store.put(2, serialize_named_tensors({"w": torch.zeros(64)}))
        store.put(3, serialize_named_tensors({"w": torch.ones(64)}))
        store.serve_deferred(router)
        reply = recv(dealer)[1]
        assert reply.missing and reply.version == 1 and not store.deferred


def test_generators_can_keep_chunk_memory_on_glibc():
    import platform

    from asyncrl.generators.weights import keep_chunk_memory

    # mallopt answers 0 for a value it refuses (an mmap threshold above 32 MiB, say).
    assert keep_chunk_memory() == (platform.libc_ver()[0] == "glibc")

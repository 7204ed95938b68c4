"""Weight serialisation and the generator-side chunk assembly."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load

from generators.weights import ChunkAssembler, WeightsError, decode_safetensors, verify_and_decode
from learner.weights import WeightsStore, digest_of, serialize_named_tensors


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

"""The weight-blob format both roles share (`asyncrl.protocol.blob`): header layout, digest,
the hashing copy and the version directories of the disk transport."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from asyncrl.protocol import blob as blob_module
from asyncrl.protocol.blob import (
    BlobError,
    Checksum,
    Serialized,
    decode_header,
    digest_of,
    encode_header,
    version_dir,
    write_version_dir,
)

ENTRIES = {"a": ("F32", [2, 3]), "b": ("BF16", [5])}


def test_encode_header_layout_by_hand():
    prefix, header, data_bytes = encode_header(ENTRIES)
    # a: 2*3 = 6 float32 = 24 bytes at [0, 24); b: 5 bfloat16 = 10 bytes at [24, 34).
    assert header == {
        "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "b": {"dtype": "BF16", "shape": [5], "data_offsets": [24, 34]},
    }
    assert data_bytes == 34
    # Compact JSON, counted piece by piece: '{"a":' 5 + '{"dtype":"F32",' 15 +
    # '"shape":[2,3],' 14 + '"data_offsets":[0,24]}' 22 + ',' 1 + '"b":' 4 +
    # '{"dtype":"BF16",' 16 + '"shape":[5],' 12 + '"data_offsets":[24,34]}' 23 + '}' 1 = 113,
    # padded with spaces to 120 (the next multiple of 8); the prefix is 8 + 120 = 128 bytes.
    assert struct.unpack_from("<Q", prefix)[0] == 120
    assert len(prefix) == 128
    assert prefix[8 + 113 :] == b" " * 7


def test_header_round_trip_and_data_offset():
    prefix, header, data_bytes = encode_header(ENTRIES)
    blob = prefix + bytes(range(data_bytes))
    entries, base = decode_header(blob)
    assert entries == header
    assert base == 128  # the data section starts right after the 128-byte prefix
    assert blob[base + 24 : base + 34] == bytes(range(24, 34))  # b's bytes


@pytest.mark.parametrize("name_len", range(9))
def test_data_section_is_8_byte_aligned_for_every_padding(name_len):
    # Nine name lengths cover all eight residues of the JSON length mod 8.
    prefix, _, _ = encode_header({"x" * name_len or "w": ("U8", [3])})
    (n,) = struct.unpack_from("<Q", prefix)
    assert len(prefix) == 8 + n and len(prefix) % 8 == 0
    json.loads(prefix[8:])  # trailing spaces are valid JSON whitespace


def test_the_safetensors_library_reads_our_blobs_and_we_read_its():
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    i = np.array([7, -1], dtype=np.int64)
    prefix, _, _ = encode_header({"w": ("F32", [2, 3]), "i": ("I64", [2])})
    loaded = safetensors.numpy.load(prefix + w.tobytes() + i.tobytes())
    np.testing.assert_array_equal(loaded["w"], w)
    np.testing.assert_array_equal(loaded["i"], i)
    theirs = safetensors.numpy.save({"w": w}, metadata={"format": "pt"})
    entries, base = decode_header(theirs)
    assert list(entries) == ["w"]  # __metadata__ is not a tensor
    begin, end = entries["w"]["data_offsets"]
    got = np.frombuffer(theirs[base + begin : base + end], np.float32)
    assert got.tolist() == [0, 1, 2, 3, 4, 5]


def _blob(header: object, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _entry(**kw) -> dict:
    return {"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], **kw}}


@pytest.mark.parametrize(
    "blob,message",
    [
        (b"\x01\x00", "shorter than a safetensors header"),
        (struct.pack("<Q", 100) + b"{}", "header length exceeds the blob"),
        (struct.pack("<Q", 3) + b"{x}", "not JSON"),
        (struct.pack("<Q", 2) + b"\xff\xfe", "not JSON"),
        (_blob([1, 2]), "not a mapping"),
        (_blob({"t": {"dtype": "F32", "shape": [2]}}, b"\0" * 8), "malformed header entry"),
        (_blob({"t": [1, 2, 3]}, b"\0" * 8), "malformed header entry"),
        (_blob(_entry(data_offsets=[0, 8, 9]), b"\0" * 8), "malformed header entry"),
        (_blob(_entry(dtype="F8_E4M3"), b"\0" * 8), "unsupported dtype"),
        (_blob(_entry(dtype=["F32"]), b"\0" * 8), "unsupported dtype"),
        (_blob(_entry(shape=5), b"\0" * 8), "not a list of sizes"),
        (_blob(_entry(shape=["2"]), b"\0" * 8), "not a list of sizes"),
        (_blob(_entry(shape=[2.0]), b"\0" * 8), "not a list of sizes"),
        (_blob(_entry(shape=[True, 2]), b"\0" * 8), "not a list of sizes"),
        # (-1) * (-2) = 2 elements would match the 8 bytes: negative sizes must not cancel.
        (_blob(_entry(shape=[-1, -2]), b"\0" * 8), "not a list of sizes"),
        (_blob(_entry(data_offsets=["0", 8]), b"\0" * 8), "not integers"),
        # 2 float32 = 8 bytes, but the range says 4.
        (_blob(_entry(data_offsets=[0, 4]), b"\0" * 8), "do not match its shape"),
        # The right size, past the end of a blob with only 4 data bytes.
        (_blob(_entry(), b"\0" * 4), "do not match its shape"),
        (_blob(_entry(data_offsets=[8, 0]), b"\0" * 8), "do not match its shape"),
        (_blob(_entry(data_offsets=[-8, 0]), b"\0" * 8), "do not match its shape"),
    ],
)
def test_bad_headers_are_a_blob_error(blob, message):
    with pytest.raises(BlobError, match=message):
        decode_header(blob)


def test_encode_header_refuses_what_it_cannot_describe():
    with pytest.raises(BlobError, match="unsupported dtype tag C64"):
        encode_header({"z": ("C64", [1])})
    with pytest.raises(BlobError, match="not a list of sizes"):
        encode_header({"z": ("F32", [-1])})


def test_digest_is_xxh3_64_whatever_the_pieces():
    # XXH3-64 of no input is the published test vector 0x2D06800538D394C2.
    assert digest_of(b"") == "xxh3:2d06800538d394c2"
    data = np.random.default_rng(0).integers(0, 256, 1_000_003, dtype=np.uint8).tobytes()
    c = Checksum()
    for begin, end in [(0, 1), (1, 8), (8, 300_000), (300_000, 1_000_003)]:
        c.update(data[begin:end])
    assert c.hexdigest() == digest_of(data) == digest_of(memoryview(data))
    assert digest_of(data) != digest_of(data[:-1])


def test_a_serialized_blob_keeps_the_digest_computed_while_it_was_written():
    blob = Serialized(b"abc")
    assert digest_of(blob) == digest_of(b"abc")  # no digest recorded: computed
    blob.digest = "xxh3:0000000000000001"
    assert digest_of(blob) == "xxh3:0000000000000001"  # recorded: trusted, not recomputed


def test_checksum_copy_over_several_pieces_and_a_partial_last_one():
    piece = 256 << 10
    # 3 whole 256 KiB pieces and a last one of 100 bytes: 3 * 262144 + 100 = 786532 bytes.
    src = np.random.default_rng(1).integers(0, 256, 3 * piece + 100, dtype=np.uint8).tobytes()
    dst = bytearray(len(src))
    c = Checksum()
    c.copy(memoryview(dst), src)
    assert bytes(dst) == src
    assert c.hexdigest() == digest_of(src)


def test_checksum_copy_takes_typed_arrays_by_their_bytes():
    # float32 [1000] = 4000 bytes: the copy counts bytes, not elements.
    src = np.linspace(-1, 1, 1000, dtype=np.float32)
    dst = bytearray(4000)
    c = Checksum()
    c.copy(memoryview(dst), src)
    assert np.frombuffer(dst, np.float32).tolist() == src.tolist()
    assert c.hexdigest() == digest_of(src.tobytes())


def test_checksum_copy_refuses_a_size_mismatch():
    with pytest.raises(ValueError, match="copy of 10 bytes into 9"):
        Checksum().copy(memoryview(bytearray(9)), b"x" * 10)


def _model_dir(tmp_path: Path) -> str:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "tiny"}')
    return str(model)


def test_write_version_dir_layout(tmp_path):
    root, model = tmp_path / "weights", _model_dir(tmp_path)
    path = write_version_dir(str(root), 3, b"blob-3", model)
    assert path == str(version_dir(str(root), 3)) == str(root / "v3")
    # config.json is copied; generation_config.json does not exist in the model, so neither here.
    assert sorted(os.listdir(path)) == ["config.json", "model.safetensors"]
    assert (root / "v3" / "model.safetensors").read_bytes() == b"blob-3"
    assert (root / "v3" / "config.json").read_text() == '{"model_type": "tiny"}'
    # Written again, a version is replaced whole.
    write_version_dir(str(root), 3, b"blob-3b", model)
    assert (root / "v3" / "model.safetensors").read_bytes() == b"blob-3b"


def test_write_version_dir_keeps_the_newest_two(tmp_path):
    root, model = tmp_path / "weights", _model_dir(tmp_path)
    (root / "notes").mkdir(parents=True)  # not a version: left alone
    for v in (1, 2, 10, 9):
        write_version_dir(str(root), v, f"blob-{v}".encode(), model)
    # The newest two by number: 10 and 9. Not as text (that keeps "v9" and "v2", both > "v10"),
    # nor by write order (9 came last); v1 and v2 are deleted.
    assert sorted(p.name for p in root.iterdir()) == ["notes", "v10", "v9"]
    write_version_dir(str(root), 11, b"blob-11", model, keep=1)
    assert sorted(p.name for p in root.iterdir()) == ["notes", "v11"]


def test_write_version_dir_never_exposes_a_partial_version(tmp_path, monkeypatch):
    root, model = tmp_path / "weights", _model_dir(tmp_path)
    write_version_dir(str(root), 4, b"blob-4", model)
    seen = []
    fsync = os.fsync

    def spy(fd):
        # The blob is fully written here and not yet renamed: readers see only v4.
        seen.append(sorted(p.name for p in root.glob("v*")))
        fsync(fd)

    monkeypatch.setattr(blob_module.os, "fsync", spy)
    write_version_dir(str(root), 5, b"blob-5", model)
    assert seen == [["v4"]]
    assert sorted(p.name for p in root.iterdir()) == ["v4", "v5"]

    class DiskFull(OSError):
        pass

    def fail(fd):
        raise DiskFull("no space left on device")

    monkeypatch.setattr(blob_module.os, "fsync", fail)
    with pytest.raises(DiskFull):
        write_version_dir(str(root), 6, b"blob-6", model)
    # No v6, and no temporary copy left behind to fill the disk further.
    assert sorted(p.name for p in root.iterdir()) == ["v4", "v5"]

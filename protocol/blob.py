"""The weight-blob format: the contract between the learner that writes a version and the
generators that load it, whatever the transport.

A version is one safetensors encoding of the policy's state (u64 little-endian header
length, a JSON header naming each tensor's dtype tag, shape and byte range, then the data,
8-byte aligned), checked by an XXH3-64 digest written `xxh3:<hex>`. On disk a version is a
directory `v<version>/` holding `model.safetensors` and the base model's config files, made
under a temporary name and renamed into place. Chunks of a blob travel at most
`MAX_WEIGHT_CHUNK_BYTES` each.

No torch here: dtype tags map to the names of torch's dtype attributes (`DTYPE_TAGS`), which
each side resolves with `getattr(torch, name)`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from pathlib import Path

import xxhash

# Largest weight chunk (`learner.weights.chunk_bytes`): glibc's largest heap block on 64-bit;
# larger ones are mapped afresh for every received chunk, which costs a page fault per page.
MAX_WEIGHT_CHUNK_BYTES = 32 << 20

# The blob's file name inside a version directory (what SGLang's loader looks for).
WEIGHTS_FILE = "model.safetensors"

# safetensors dtype tag -> (torch dtype attribute name, bytes per element)
DTYPE_TAGS: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
}

# Bytes copied and hashed per step of `Checksum.copy`: fits the L2 cache with room to spare
# (64 KiB measured 10% slower, 1 MiB 15%).
_PIECE = 256 << 10


class BlobError(ValueError):
    """A blob whose header does not describe its bytes."""


class Serialized(bytearray):
    """A serialised state whose digest was computed while it was written (or received)."""

    digest: str = ""


class Checksum:
    """Running 64-bit XXH3 of a byte stream, fed in order (chunk by chunk on the generator).

    Integrity, not authenticity: it catches truncation, a torn or recycled buffer and a stale
    file; who may publish is CurveZMQ's job. It is paid once per publish and once per load by
    every generator, on the critical path of both: XXH3 runs at ~14 GB/s here, zlib's CRC-32
    at 3.5 and sha256 at 1.5 (which made verification cost more than the transfer)."""

    def __init__(self) -> None:
        self._h = xxhash.xxh3_64()

    def update(self, data) -> None:
        self._h.update(data)  # releases the GIL on large buffers

    def copy(self, dst: memoryview, src) -> None:
        """`dst[:] = src`, hashing `src` on the way. In 256 KiB pieces, so each piece is
        hashed while the copy left it in the core's cache: the hash then costs a fifth of
        the copy instead of a second pass over memory. Python's slice assignment is a plain
        memcpy."""
        src = memoryview(src).cast("B")
        if src.nbytes != dst.nbytes:
            raise ValueError(f"copy of {src.nbytes} bytes into {dst.nbytes}")
        for i in range(0, src.nbytes, _PIECE):
            piece = src[i : i + _PIECE]
            dst[i : i + _PIECE] = piece
            self._h.update(piece)

    def hexdigest(self) -> str:
        return f"xxh3:{self._h.hexdigest()}"


def _element_count(name: str, shape) -> int:
    """Elements of a tensor of `shape`: a list (or tuple) of non-negative ints, nothing else,
    so a hostile header can neither raise an unexpected error nor cancel signs into a size
    that matches its byte range."""
    if not isinstance(shape, (list, tuple)) or not all(type(d) is int and d >= 0 for d in shape):
        raise BlobError(f"{name}: shape {str(shape)[:64]} is not a list of sizes")
    return math.prod(shape)


def digest_of(blob: bytes | bytearray | memoryview) -> str:
    """The digest of a whole blob (taken from a `Serialized` that already knows it)."""
    if isinstance(blob, Serialized) and blob.digest:
        return blob.digest
    c = Checksum()
    c.update(blob)
    return c.hexdigest()


def encode_header(entries: dict[str, tuple[str, list[int]]]) -> tuple[bytes, dict, int]:
    """The first bytes of a blob for tensors `name -> (dtype tag, shape)`, in that order.

    Returns (prefix = u64 length + JSON header padded to 8 bytes, the header, data bytes)."""
    header: dict = {}
    offset = 0
    for name, (tag, shape) in entries.items():
        if tag not in DTYPE_TAGS:
            raise BlobError(f"{name}: unsupported dtype tag {tag}")
        nbytes = _element_count(name, shape) * DTYPE_TAGS[tag][1]
        header[name] = {
            "dtype": tag,
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data section starts 8-byte aligned
    return struct.pack("<Q", len(head)) + head, header, offset


def decode_header(blob) -> tuple[dict, int]:
    """(tensor entries without `__metadata__`, offset of the data section) of a blob,
    each entry's range checked against the blob's length and its shape."""
    if len(blob) < 8:
        raise BlobError("weights blob shorter than a safetensors header")
    (n,) = struct.unpack_from("<Q", blob, 0)
    if 8 + n > len(blob):
        raise BlobError("safetensors header length exceeds the blob")
    try:
        header = json.loads(bytes(blob[8 : 8 + n]))
    except ValueError as exc:
        raise BlobError(f"safetensors header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise BlobError("safetensors header is not a mapping")
    base = 8 + n
    entries = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            tag, shape, (begin, end) = meta["dtype"], meta["shape"], meta["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise BlobError(f"{name}: malformed header entry") from None
        if not isinstance(tag, str) or tag not in DTYPE_TAGS:
            raise BlobError(f"{name}: unsupported dtype {str(tag)[:16]}")
        count = _element_count(name, shape)
        if type(begin) is not int or type(end) is not int:
            raise BlobError(f"{name}: data offsets are not integers")
        fits = 0 <= begin <= end and base + end <= len(blob)
        if not fits or end - begin != count * DTYPE_TAGS[tag][1]:
            raise BlobError(f"{name}: data offsets do not match its shape")
        entries[name] = meta
    return entries, base


def write_version_dir(root: str, version: int, blob, model_path: str, keep: int = 2) -> str:
    """`root/v<version>/` with `model.safetensors` and the base model's config files, built
    under a temporary name and renamed so readers never see a partial version (the `disk`
    transport; SGLang's /update_weights_from_disk reads such a directory). Keeps the newest
    `keep` versions: a generator may still be reading the previous one."""
    base = Path(root)
    base.mkdir(parents=True, exist_ok=True)
    final = version_dir(root, version)
    tmp = base / f".v{version}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for name in ("config.json", "generation_config.json"):
            src = Path(model_path) / name
            if src.exists():
                shutil.copy(src, tmp / name)
        with open(tmp / WEIGHTS_FILE, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        # A full disk is the usual cause: leave no half-written copy behind to fill it more.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    versions = sorted(
        (int(p.name[1:]) for p in base.glob("v*") if p.name[1:].isdigit()), reverse=True
    )
    for old in versions[keep:]:
        shutil.rmtree(base / f"v{old}", ignore_errors=True)
    return str(final)


def version_dir(root: str, version: int) -> Path:
    """Where the disk layout keeps `version` under `root`."""
    return Path(root) / f"v{version}"

"""Weight subscriber: fetch a published version in chunks, verify it, load it into a model.

Chunks are requested with a small window of outstanding requests so loopback bandwidth is used
without holding more than a few chunks in flight.
"""

from __future__ import annotations

import logging
import math

import torch

logger = logging.getLogger(__name__)

# Chunk requests a generator keeps outstanding, so ZeroMQ receives the next chunks while
# one is copied and hashed (`asyncrl bench` uses it too). 8 and 16 measured no better.
FETCH_WINDOW = 4


# glibc's malloc parameters (malloc.h) and the values `keep_chunk_memory` sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_TRIM_BYTES = 256 << 20


def keep_chunk_memory() -> bool:
    """Keep the memory of received chunks in the process between versions (glibc only;
    False elsewhere). ZeroMQ mallocs each received chunk on its I/O thread, and while the
    generator copies one chunk the next few wait in the queue; when they are freed, glibc's
    default (trim the heap once its free top exceeds twice the largest freed block) gives
    the pages back, and the next version's chunks fault them in again: measured 37,000
    faults (150 MB) per generator per 524 MB version, and `weights_ratio` 0.41-0.46 without
    this against 0.50-0.55 with it (2 cores, before streaming). Setting any threshold also
    freezes glibc's adaptive mmap threshold at 128 KiB, which would mmap every chunk afresh,
    so both are set: chunks up to `MAX_WEIGHT_CHUNK_BYTES` (the bound of
    `learner.weight_chunk_bytes`) come from the heap and up to 256 MiB of free heap stays
    mapped."""
    import ctypes
    import platform

    from asyncrl.protocol.blob import MAX_WEIGHT_CHUNK_BYTES

    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MAX_WEIGHT_CHUNK_BYTES) == 1
    return libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_BYTES) == 1 and ok


class WeightsError(RuntimeError):
    """The fetched weights are incomplete, corrupt or do not fit the model."""


_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class VerifiedBlob(bytearray):
    """A fetched blob whose digest was already checked while it arrived (no second pass)."""

    digest: str = ""


class ChunkAssembler:
    """Copies chunks into one buffer and hashes them as they arrive, in order, so both
    overlap with the transfer of the chunks still in flight (ZeroMQ receives on its own I/O
    thread). Out-of-order chunks wait until their predecessors came. `reuse`: the previous
    version's buffer, written over when the size fits (a fresh one costs page faults that
    take longer than the copy)."""

    def __init__(self, size: int, chunks: int, reuse: bytearray | None = None):
        from asyncrl.protocol.blob import Checksum

        fits = isinstance(reuse, VerifiedBlob) and len(reuse) == size
        self.buf = reuse if fits else VerifiedBlob(size)
        self.buf.digest = ""
        self.view = memoryview(self.buf)
        self.size, self.chunks = size, chunks
        self.hasher = Checksum()
        self.offset = 0
        self.next = 0
        self.waiting: dict[int, object] = {}

    def add(self, index: int, data) -> None:
        self.waiting[index] = data
        while self.next in self.waiting:
            chunk = memoryview(self.waiting.pop(self.next)).cast("B")
            n = chunk.nbytes
            if self.offset + n > self.size:
                raise WeightsError(f"chunks exceed the announced size {self.size}")
            self.hasher.copy(self.view[self.offset : self.offset + n], chunk)
            self.offset += n
            self.next += 1

    @property
    def complete(self) -> bool:
        return self.next == self.chunks

    def finish(self, digest: str) -> VerifiedBlob:
        if not self.complete or self.offset != self.size:
            raise WeightsError(f"got {self.offset} bytes, announced {self.size}")
        got = self.hasher.hexdigest()
        if got != digest:
            raise WeightsError(f"digest mismatch: got {got}, announced {digest}")
        self.buf.digest = digest
        self.view.release()
        return self.buf


def verify_and_decode(blob: bytes | bytearray, digest: str) -> dict[str, torch.Tensor]:
    """Check the digest, then view the safetensors payload as tensors without copying
    (the caller copies them into the model; a second copy here would double load time)."""
    from asyncrl.protocol.blob import digest_of

    if isinstance(blob, VerifiedBlob) and blob.digest == digest:
        return decode_safetensors(blob)
    got = digest_of(blob)
    if got != digest:
        raise WeightsError(f"digest mismatch: got {got}, announced {digest}")
    return decode_safetensors(blob)


def decode_safetensors(blob: bytes | bytearray) -> dict[str, torch.Tensor]:
    """Tensors viewing `blob` (safetensors layout: u64 header length, JSON header, data)."""
    import json
    import struct
    import warnings

    if len(blob) < 8:
        raise WeightsError("weights blob shorter than a safetensors header")
    (n,) = struct.unpack_from("<Q", blob, 0)
    if 8 + n > len(blob):
        raise WeightsError("safetensors header length exceeds the blob")
    header = json.loads(bytes(blob[8 : 8 + n]))
    base = 8 + n
    out = {}
    with warnings.catch_warnings():
        # Read-only `bytes` input is fine: the tensors are only read (copied into the model).
        warnings.simplefilter("ignore", UserWarning)
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            dtype = _DTYPES.get(meta["dtype"])
            if dtype is None:
                raise WeightsError(f"{name}: unsupported dtype {meta['dtype']}")
            begin, end = meta["data_offsets"]
            shape = meta["shape"]
            count = (end - begin) // torch.empty(0, dtype=dtype).element_size()
            if base + end > len(blob) or count != math.prod(shape):
                raise WeightsError(f"{name}: data offsets do not match its shape")
            if count == 0:
                out[name] = torch.empty(shape, dtype=dtype)
                continue
            t = torch.frombuffer(blob, dtype=dtype, count=count, offset=base + begin)
            out[name] = t.reshape(shape)
    return out


def load_into_model(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy tensors into `model`'s parameters in place. The publisher sends deduplicated
    parameters (tied weights once), so the names must equal `named_parameters()`."""
    params = dict(model.named_parameters())
    if set(params) != set(tensors):
        missing = sorted(set(params) - set(tensors))[:5]
        extra = sorted(set(tensors) - set(params))[:5]
        raise WeightsError(f"weights do not fit the model: missing {missing}, extra {extra}")
    with torch.no_grad():
        for name, p in params.items():
            src = tensors[name]
            if src.shape != p.shape:
                raise WeightsError(f"{name}: shape {tuple(src.shape)} != {tuple(p.shape)}")
            p.copy_(src.to(device=p.device, dtype=p.dtype))

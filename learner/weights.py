"""Weight publishing: serialise the policy once per version and serve it in chunks.

The learner never pushes weights at generators: it announces `(version, digest, size)` on the
PUB socket and each generator pulls chunks over the control socket at its own pace, so a slow
generator never blocks the learner. Serialisation is safetensors (no pickle); the digest lets
the generator verify what it loads.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

import torch
from safetensors.torch import save


def digest_of(blob: bytes | bytearray | memoryview) -> str:
    # sha256 runs on the CPU's SHA extensions (~1.5 GB/s here vs ~0.6 for blake2b); the
    # digest is computed once per publish and once per load, on the critical path of both.
    return hashlib.sha256(blob).hexdigest()


def serialize_named_tensors(tensors: dict[str, torch.Tensor]) -> bytes:
    """safetensors bytes of `tensors` (moved to CPU, contiguous)."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return save(cpu)


@dataclass
class PublishedWeights:
    version: int
    blob: bytes
    digest: str
    chunk_bytes: int

    @property
    def chunks(self) -> int:
        return max(1, -(-len(self.blob) // self.chunk_bytes))

    def chunk(self, index: int) -> memoryview:
        start = index * self.chunk_bytes
        return memoryview(self.blob)[start : start + self.chunk_bytes]


class WeightsStore:
    """The latest published version plus the one before it (for fetches in progress)."""

    def __init__(self, chunk_bytes: int):
        self.chunk_bytes = chunk_bytes
        self._lock = threading.Lock()
        self.latest: PublishedWeights | None = None
        self._previous: PublishedWeights | None = None

    def put(self, version: int, blob: bytes) -> PublishedWeights:
        pub = PublishedWeights(version, blob, digest_of(blob), self.chunk_bytes)
        with self._lock:
            self._previous, self.latest = self.latest, pub
        return pub

    def get(self, version: int) -> PublishedWeights | None:
        with self._lock:
            for pub in (self.latest, self._previous):
                if pub is not None and pub.version == version:
                    return pub
        return None

"""Weight subscriber: fetch a published version in chunks, verify it, load it into a model.

Chunks are requested with a small window of outstanding requests so loopback bandwidth is used
without holding more than a few chunks in flight.
"""

from __future__ import annotations

import hashlib
import logging

import torch
from safetensors.torch import load

logger = logging.getLogger(__name__)


class WeightsError(RuntimeError):
    """The fetched weights are incomplete, corrupt or do not fit the model."""


def verify_and_decode(blob: bytes, digest: str) -> dict[str, torch.Tensor]:
    got = hashlib.blake2b(blob, digest_size=16).hexdigest()
    if got != digest:
        raise WeightsError(f"digest mismatch: got {got}, announced {digest}")
    return load(blob)


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

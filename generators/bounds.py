"""What a generator accepts from its learner, checked against the generator's own limits.

Without CURVE anyone who can reach a generator's sockets can claim to be its learner, and even
a genuine learner's numbers size this process's memory and choose the files it reads. So an
announced weights size, chunk count and chunk size, a disk path, a lease's group size, prompt
length and `max_new_tokens` are checked here first; a message past them is dropped, counted
(`asyncrl_generator_rejected_messages_total{reason}`), logged at most once per reason every
few seconds, and never acted on.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path, PurePath

from asyncrl.generators.config import LearnerLimits
from asyncrl.generators.metrics import GeneratorMetrics
from asyncrl.protocol.blob import MAX_WEIGHT_CHUNK_BYTES
from asyncrl.protocol.messages import Lease, WeightsAnnouncement, WeightsChunk, Welcome

logger = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 5.0


def physical_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: no bound from the host
        return 1 << 50


class LearnerBounds:
    """Checks messages from the learner; each `*_ok` answers whether to act on one (a False
    has been counted and logged)."""

    def __init__(self, limits: LearnerLimits, metrics: GeneratorMetrics, weights_dir: str = ""):
        self.limits = limits
        self.metrics = metrics
        self.max_model_bytes = limits.max_model_bytes or physical_memory_bytes()
        self.weights_dir = Path(weights_dir).resolve() if weights_dir else None
        self._logged: dict[str, float] = {}

    def reject(self, reason: str, detail: str) -> bool:
        """Count and (rate-limited) log one rejected message; always False."""
        self.metrics.rejected.labels(reason=reason).inc()
        now = time.monotonic()
        if now - self._logged.get(reason, -LOG_EVERY_SECONDS) >= LOG_EVERY_SECONDS:
            self._logged[reason] = now
            logger.warning("dropped a message from the learner (%s): %s", reason, detail)
        return False

    def welcome_ok(self, w: Welcome) -> bool:
        """The connection's parameters: timings a heartbeat thread and leases run on, ports."""
        if not (0 < w.heartbeat_seconds <= 3600 and 0 <= w.lease_seconds <= 86400):
            return self.reject(
                "welcome", f"heartbeat {w.heartbeat_seconds}s, lease {w.lease_seconds}s"
            )
        if not (0 < w.rollouts_port < 65536 and 0 < w.weights_port < 65536):
            return self.reject("welcome", f"ports {w.rollouts_port}, {w.weights_port}")
        return True

    def announcement_ok(self, ann: WeightsAnnouncement) -> bool:
        """Size and chunk count of a version (what the chunk fetcher allocates and asks for).
        A bad disk path alone does not drop the version: `path_ok` refuses it and the chunks
        are fetched instead."""
        if ann.version < 0 and ann.size == 0:
            return True  # "no weights yet"
        if not 0 < ann.size <= self.max_model_bytes:
            return self.reject(
                "weights_size",
                f"version {ann.version}: {ann.size} bytes, at most "
                f"{self.max_model_bytes} (generator.limits.max_model_bytes)",
            )
        # Every chunk holds at least a byte and at most MAX_WEIGHT_CHUNK_BYTES: the number of
        # requests the fetch makes is bounded by the size, the size by memory.
        fewest = -(-ann.size // MAX_WEIGHT_CHUNK_BYTES)
        if not fewest <= ann.chunks <= ann.size:
            return self.reject(
                "chunks",
                f"version {ann.version}: {ann.chunks} chunks for {ann.size} bytes "
                f"(between {fewest} and {ann.size})",
            )
        return True

    def chunk_ok(self, chunk: WeightsChunk) -> bool:
        if chunk.data.nbytes > MAX_WEIGHT_CHUNK_BYTES:
            return self.reject(
                "chunk_bytes",
                f"chunk {chunk.index}: {chunk.data.nbytes} bytes, at most {MAX_WEIGHT_CHUNK_BYTES}",
            )
        return True

    def path_ok(self, path: str) -> bool:
        """A disk-transport directory: no `..`, and under the configured weights dir once
        resolved (symlinks included; a relative path is taken from our working directory,
        as the learner's is from its own)."""
        if not path:
            return False
        if self.weights_dir is None:
            return self.reject("path", f"{path!r}: no generator.limits.weights_dir configured")
        if ".." in PurePath(path).parts:
            return self.reject("path", f"{path!r}: contains '..'")
        try:
            resolved = Path(path).resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
            return self.reject("path", f"{path!r}: {exc}")
        if not resolved.is_relative_to(self.weights_dir):
            return self.reject("path", f"{path!r} is not under {self.weights_dir}")
        return True

    def lease_ok(self, lease: Lease) -> bool:
        lim = self.limits
        if not 1 <= lease.group_size <= lim.max_group_size:
            return self.reject(
                "group_size",
                f"lease {lease.lease_id}: group size {lease.group_size}, "
                f"at most {lim.max_group_size} (generator.limits.max_group_size)",
            )
        n = lease.sampling.max_new_tokens
        if not 1 <= n <= lim.max_new_tokens:
            return self.reject(
                "max_new_tokens",
                f"lease {lease.lease_id}: max_new_tokens {n}, at most "
                f"{lim.max_new_tokens} (generator.limits.max_new_tokens)",
            )
        if not 1 <= lease.prompt_ids.size <= lim.max_prompt_tokens:
            return self.reject(
                "prompt_length",
                f"lease {lease.lease_id}: {lease.prompt_ids.size} prompt "
                f"tokens, at most {lim.max_prompt_tokens} (generator.limits.max_prompt_tokens)",
            )
        return True

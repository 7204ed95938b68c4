"""Weight serving: the `WeightsStore` answering chunk requests (held ones too), version
announcements handed to the socket loop for the PUB socket, and the nccl join/pull requests
passed to an attached publisher.

Publishing runs on the training thread, the socket is the loop's: an announcement is left here
and the loop woken (`wake`) to send it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from asyncrl.learner.hub.core import RateLimitedLog
from asyncrl.learner.metrics import LearnerMetrics
from asyncrl.learner.weights import MAX_OUTSTANDING_PER_PEER, PublishedWeights, WeightsStore
from asyncrl.protocol.messages import (
    NcclGroup,
    NcclJoin,
    NcclPlan,
    NcclPull,
    WeightsAnnouncement,
    WeightsRequest,
)


class NcclService(Protocol):
    """What the hub needs of the nccl publisher (built on the trainer's side)."""

    def join(self, msg: NcclJoin) -> NcclGroup: ...

    def pull(self, msg: NcclPull) -> NcclPlan: ...

    def forget(self, generator_id: str) -> None: ...

    def close(self) -> None: ...


class WeightServing:
    def __init__(
        self,
        chunk_bytes: int,
        metrics: LearnerMetrics,
        wake: Callable[[], None],
        admitted: Callable[[bytes], bool],
    ):
        """`admitted(routing_identity)`: whether that connection said hello (only those are
        served chunks)."""
        self.store = WeightsStore(chunk_bytes)
        self.admitted = admitted
        self.log = RateLimitedLog()
        self.metrics = metrics
        self.wake = wake
        self.path = ""  # where the disk transport wrote the latest version
        self.nccl: NcclService | None = None
        self._pending: WeightsAnnouncement | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------ training thread
    def publish(self, version: int, blob: bytes, path: str = "") -> None:
        """Announce a finished version (`path`: where the disk transport wrote it)."""
        pub = self.store.put(version, blob)
        self.path = path
        self.metrics.weight_bytes.inc(len(blob))
        self._announce(
            WeightsAnnouncement(pub.version, pub.digest, len(pub.blob), pub.chunks, path)
        )

    def begin_publish(self, version: int, writer) -> PublishedWeights:
        """Announce a version as `writer` starts writing it (no digest yet): generators
        between groups fetch chunks as they are written. `finish_publish` once
        `writer.finish()` ran announces it again, complete."""
        pub = self.store.begin(version, writer)
        self.path = ""
        self._announce(WeightsAnnouncement(pub.version, "", len(pub.blob), pub.chunks))
        return pub

    def finish_publish(self, pub: PublishedWeights) -> None:
        self.store.complete(pub)
        self.metrics.weight_bytes.inc(len(pub.blob))
        # Wakes the loop for the last chunk, which waited for the digest. Generators that
        # load in the middle of a generation wait for this announcement: they would rather
        # keep decoding than stall while the learner is still writing.
        self._announce(WeightsAnnouncement(pub.version, pub.digest, len(pub.blob), pub.chunks))

    def _announce(self, ann: WeightsAnnouncement) -> None:
        with self._lock:
            self._pending = ann
        self.wake()

    # ------------------------------------------------------------ socket thread
    def take_announcement(self) -> WeightsAnnouncement | None:
        with self._lock:
            ann, self._pending = self._pending, None
        return ann

    def serve(self, control, prefix: list[bytes], msg: WeightsRequest) -> None:
        """Serve a chunk to a connection that said hello and has fewer than the cap of
        requests outstanding; refused requests get no reply (counted): a generator whose
        learner restarted under it times out, reconnects and says hello."""
        if not self.admitted(prefix[0]):
            self._refuse("no_hello")
        elif self.store.outstanding(prefix[0]) >= MAX_OUTSTANDING_PER_PEER:
            self._refuse("peer_cap")
        else:
            # The store has its own lock: chunks are served without taking the hub's.
            self._served(self.store.serve(control, prefix, msg))

    def serve_deferred(self, control) -> None:
        """Answer held chunk requests whose chunk has been written since."""
        if self.store.deferred:
            self._served(self.store.serve_deferred(control))

    def _served(self, nbytes: int) -> None:
        # Only bytes ZeroMQ queued count as served; replies it could not queue are refusals.
        self.metrics.weight_bytes_served.inc(nbytes)
        if self.store.not_sent:
            self._refuse("not_sent", self.store.not_sent)
            self.store.not_sent = 0

    def _refuse(self, reason: str, n: int = 1) -> None:
        self.metrics.weight_requests_refused.labels(reason=reason).inc(n)
        self.log.warning(f"weights-{reason}", "weight requests not served (%s)", reason)

    def on_nccl(self, msg: NcclJoin | NcclPull, connection: bytes) -> NcclGroup | NcclPlan:
        """Join or pull for a connection that said hello (a group costs the learner a port
        and a broadcast per version: not for strangers)."""
        why = ""
        if not self.admitted(connection):
            self._refuse("no_hello")
            why = "say hello first"
        elif self.nccl is None:
            why = "learner.weights.type is not nccl"
        if why:
            if isinstance(msg, NcclJoin):
                return NcclGroup("", 0, "", "", error=why)
            return NcclPlan(msg.version, "", missing=True, reason=why)
        return self.nccl.join(msg) if isinstance(msg, NcclJoin) else self.nccl.pull(msg)

    def forget(self, generator_id: str) -> None:
        if self.nccl is not None:
            self.nccl.forget(generator_id)

    def close(self) -> None:
        if self.nccl is not None:
            self.nccl.close()

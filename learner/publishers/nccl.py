"""The nccl transport: SGLang servers join a weight-update group with the learner (rank 0)
and receive each version as bucketed broadcasts of the blob the hub holds
(`/update_weights_from_distributed`); the groups themselves are in `nccl_channel.py`.

The publisher attaches an `NcclServer` to the hub, which routes generators' `NcclJoin` and
`NcclPull` to it; versions are published whole, since a plan needs the finished blob.
"""

from __future__ import annotations

import logging
import socket

from asyncrl.learner.config import LearnerConfig, NcclWeights
from asyncrl.learner.engine import Engine
from asyncrl.learner.publishers.base import WeightPublisher
from asyncrl.learner.publishers.nccl_channel import Bucket, NcclChannel, plan_buckets
from asyncrl.learner.weights import BlobWriter
from asyncrl.protocol.messages import NcclGroup, NcclJoin, NcclPlan, NcclPull

logger = logging.getLogger(__name__)


class NcclPublisher(WeightPublisher):
    def __init__(self, engine: Engine, hub, learner: LearnerConfig, model_path: str) -> None:
        super().__init__(engine, hub, learner, model_path)
        self.server: NcclServer | None = None
        if hub is not None:
            self.server = NcclServer(
                learner.weights, learner.bind_host, hub.weights, hub.metrics, engine.device
            )
            hub.attach_nccl(self.server)

    def _send(self, version: int, writer: BlobWriter) -> None:
        self.hub.publish(version, self._write(writer))

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


class NcclServer:
    """The hub's side of the nccl transport: one channel per generator, answering
    `NcclJoin` and `NcclPull` from the weights store the zmq transport serves as well. Used
    from the hub thread only; channels report back through `metrics` (thread-safe)."""

    def __init__(self, settings: NcclWeights, bind_host: str, store, metrics, device: str):
        self.host = settings.host or (
            bind_host if bind_host not in ("0.0.0.0", "*") else socket.gethostname()
        )
        self.bucket_bytes = settings.bucket_bytes
        self.timeout = settings.timeout_seconds
        self.backend = settings.backend
        if self.backend == "auto":
            self.backend = "nccl" if device == "cuda" else "gloo"
        self.store = store
        self.metrics = metrics
        self.device = device
        self.channels: dict[str, NcclChannel] = {}
        self._closed: list[NcclChannel] = []  # closing, to be joined at shutdown
        self._serial = 0
        self._plan: tuple[int, list[Bucket]] | None = None  # the latest version's buckets

    def join(self, msg: NcclJoin) -> NcclGroup:
        if msg.world_size < 2:
            return NcclGroup("", 0, "", "", error=f"world_size {msg.world_size} < 2")
        self.forget(msg.generator_id)
        self._serial += 1
        ch = NcclChannel(
            msg.generator_id,
            self.host,
            msg.world_size,
            self.backend,
            self.device,
            self.timeout,
            self._serial,
            on_done=self._on_done,
        )
        self.channels[msg.generator_id] = ch
        logger.info(
            "generator %s joins weight-update group %s at %s:%d (world %d, %s)",
            msg.generator_id,
            ch.group_name,
            ch.address,
            ch.port,
            ch.world_size,
            ch.backend,
        )
        return NcclGroup(ch.address, ch.port, ch.group_name, ch.backend)

    def pull(self, msg: NcclPull) -> NcclPlan:
        ch = self.channels.get(msg.generator_id)
        if ch is None or ch.group_name != msg.group_name:
            return NcclPlan(msg.version, "", missing=True, reason="no such group: join again")
        if ch.failed:
            self.forget(msg.generator_id)
            return NcclPlan(msg.version, "", missing=True, reason=ch.failed)
        pub = self.store.get(msg.version)
        if pub is None:
            return NcclPlan(msg.version, "", missing=True, reason="version no longer held")
        if self._plan is None or self._plan[0] != pub.version:
            self._plan = (pub.version, plan_buckets(pub.blob, self.bucket_bytes))
        buckets = self._plan[1]
        ch.submit(pub, buckets)
        shapes = [s for b in buckets for s in b.shapes]
        return NcclPlan(
            pub.version,
            pub.digest,
            names=[n for b in buckets for n in b.names],
            dtypes=[d for b in buckets for d in b.dtypes],
            ranks=[len(s) for s in shapes],
            dims=[x for s in shapes for x in s],
            counts=[len(b.names) for b in buckets],
        )

    def forget(self, generator_id: str) -> None:
        """Close a generator's channel (it joined again, went silent, or its group broke)
        without waiting: the hub thread calls this."""
        ch = self.channels.pop(generator_id, None)
        if ch is not None:
            ch.close()
            self._closed = [c for c in self._closed if c.alive] + [ch]

    def close(self) -> None:
        """At shutdown: every group torn down before the process may exit."""
        for gid in list(self.channels):
            self.forget(gid)
        for ch in self._closed:
            ch.close(wait=self.timeout)
        self._closed = []

    def _on_done(self, ch: NcclChannel, seconds: float, nbytes: int, ok: bool) -> None:
        if ok:
            self.metrics.weight_broadcast_seconds.observe(seconds)
            self.metrics.weight_bytes_served.inc(nbytes)
        else:
            self.metrics.weight_broadcast_failures.inc()

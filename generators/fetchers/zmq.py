"""The zmq transport, every learner's and every backend's fallback: request a version's chunks
from the learner with a window of outstanding requests, assemble and hash them as they arrive,
verify, load. A version announced while the learner still writes it (streamed) carries its
digest on the last chunk."""

from __future__ import annotations

import logging

from asyncrl.generators.backends.base import Backend
from asyncrl.generators.bounds import LearnerBounds
from asyncrl.generators.fetchers.base import Fetched, WeightFetcher
from asyncrl.generators.metrics import GeneratorMetrics
from asyncrl.generators.session import LearnerGone, Session, Stopping
from asyncrl.generators.weights import FETCH_WINDOW, ChunkAssembler, WeightsError
from asyncrl.protocol.messages import WeightsAnnouncement, WeightsChunk, WeightsRequest

logger = logging.getLogger(__name__)


class ChunkFetcher(WeightFetcher):
    how = "in chunks"

    def __init__(
        self,
        session: Session,
        backend: Backend,
        metrics: GeneratorMetrics,
        window: int = FETCH_WINDOW,
        bounds: LearnerBounds | None = None,
    ):
        self.bounds = bounds
        self.session = session
        self.backend = backend
        self.metrics = metrics
        self.window = window
        self._spare_blob: bytearray | None = None  # the last loaded blob, reused by the next

    def fetch(self, ann: WeightsAnnouncement) -> Fetched:
        assembler = ChunkAssembler(ann.size, ann.chunks, reuse=self._spare_blob)
        self._spare_blob = None
        next_index = 0
        outstanding = 0
        digest = ann.digest  # "" when announced as it was written: the last chunk brings it
        try:
            while not assembler.complete:
                while outstanding < self.window and next_index < ann.chunks:
                    self.session.send(WeightsRequest(ann.version, next_index))
                    next_index += 1
                    outstanding += 1
                msg = self.session.reply()
                outstanding -= 1
                if not isinstance(msg, WeightsChunk) or msg.version != ann.version:
                    continue
                if msg.missing:
                    # Superseded while we fetched: drop it and wait for the newer announcement.
                    self.session.drain_replies(outstanding)
                    self.metrics.weight_errors.inc()
                    return Fetched.DROPPED
                if self.bounds is not None and not self.bounds.chunk_ok(msg):
                    raise WeightsError(f"chunk {msg.index} is larger than any chunk we accept")
                if not 0 <= msg.index < ann.chunks:
                    raise WeightsError(f"chunk index {msg.index} outside 0..{ann.chunks - 1}")
                if msg.digest:
                    if digest and msg.digest != digest:
                        raise WeightsError("the last chunk's digest is not the announced one")
                    digest = msg.digest
                assembler.add(msg.index, msg.data)  # copied and hashed while more arrive
            if not digest:
                raise WeightsError("announced without a digest, and no chunk carried one")
            blob = assembler.finish(digest)
            self.backend.load_weights(blob, digest, ann.version)
            self._spare_blob = blob  # backends copy what they load and keep no reference
        except (LearnerGone, Stopping):
            raise
        except Exception as exc:  # a corrupt fetch must not kill the generator; count it
            self.session.drain_replies(outstanding)
            self.metrics.weight_errors.inc()
            logger.error("weights version %d rejected: %s", ann.version, exc)
            return Fetched.DROPPED
        return Fetched.LOADED

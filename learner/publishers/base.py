"""The learner's side of a weight transport: publish a version from the engine's parameters.

`publish` is collective: every rank calls it, because under ZeRO-3 the parameters are
gathered one at a time by all ranks together. Only rank 0, which holds the hub, writes the
blob and hands it to the hub; the transport decides how (`_send`).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

from asyncrl.learner.config import LearnerConfig
from asyncrl.learner.engine import Engine
from asyncrl.learner.weights import BlobWriter
from asyncrl.protocol.blob import Serialized


class WeightPublisher(ABC):
    """One transport; `hub` is None on ranks other than 0. Subclasses implement `_send`."""

    def __init__(self, engine: Engine, hub, learner: LearnerConfig, model_path: str) -> None:
        self.engine = engine
        self.hub = hub

    def publish(self, version: int) -> None:
        if self.hub is None:
            for _ in self.engine.full_parameters():
                pass  # take part in the gathers
            return
        t = time.time()
        # Each parameter is copied into the blob as it is gathered (ZeRO-3) or read: the blob
        # is the only full copy made, written over a retired one when the hub has it.
        writer = BlobWriter(self.engine.parameter_specs(), self.hub.spare_buffer())
        self._send(version, writer)
        dt = time.time() - t
        self.hub.metrics.publish_seconds.observe(dt)
        self.hub.metrics.step_seconds.labels(phase="publish").observe(dt)

    @abstractmethod
    def _send(self, version: int, writer: BlobWriter) -> None:
        """Fill `writer` (`_write`) and hand the version to the hub."""

    def _write(self, writer: BlobWriter) -> Serialized:
        for name, tensor in self.engine.full_parameters():
            writer.write(name, tensor)
        return writer.finish()

    def close(self) -> None:  # noqa: B027 (optional: zmq and disk hold nothing to release)
        """Release what the transport holds; called once the hub has stopped."""

"""The disk transport: each finished version is also written to a shared directory, from
which generators load it (SGLang: /update_weights_from_disk)."""

from __future__ import annotations

from asyncrl.learner.config import LearnerConfig
from asyncrl.learner.engine import Engine
from asyncrl.learner.publishers.base import WeightPublisher
from asyncrl.learner.weights import BlobWriter
from asyncrl.protocol.blob import write_version_dir


class DiskPublisher(WeightPublisher):
    def __init__(self, engine: Engine, hub, learner: LearnerConfig, model_path: str) -> None:
        super().__init__(engine, hub, learner, model_path)
        self.dir = learner.weights.dir
        self.model_path = model_path  # its config files go beside each version's weights

    def _send(self, version: int, writer: BlobWriter) -> None:
        blob = self._write(writer)  # the file needs the finished blob
        path = write_version_dir(self.dir, version, blob, self.model_path)
        self.hub.publish(version, blob, path)

"""The default transport: generators fetch chunks over the control socket, while the version
is still being written (the hub serves each chunk once it is final)."""

from __future__ import annotations

from asyncrl.learner.publishers.base import WeightPublisher
from asyncrl.learner.weights import BlobWriter


class ZmqPublisher(WeightPublisher):
    def _send(self, version: int, writer: BlobWriter) -> None:
        # Announced as serialisation starts: generators fetch the first chunks while later
        # ones are written; announced again, with the digest, once finished.
        streamed = self.hub.begin_publish(version, writer)
        self._write(writer)
        self.hub.finish_publish(streamed)

"""The disk transport: the learner wrote the version as a directory on shared storage
(`asyncrl.protocol.blob.write_version_dir`) and announced its path. Declined (chunks are
fetched instead) when the path is not visible on this host, lies outside the generator's
configured weights directory (`generator.limits.weights_dir`), or the load fails."""

from __future__ import annotations

import logging
from pathlib import Path

from asyncrl.generators.backends.base import Backend
from asyncrl.generators.bounds import LearnerBounds
from asyncrl.generators.fetchers.base import Fetched, WeightFetcher
from asyncrl.generators.metrics import GeneratorMetrics
from asyncrl.generators.weights import WeightsError
from asyncrl.protocol.blob import WEIGHTS_FILE, digest_of
from asyncrl.protocol.messages import WeightsAnnouncement

logger = logging.getLogger(__name__)


class DiskFetcher(WeightFetcher):
    """Checks the file against the announced digest, then has a backend that reads weight
    directories load the path itself (`capabilities.weight_directories`), or loads the
    bytes read here."""

    how = "from disk"

    def __init__(self, backend: Backend, metrics: GeneratorMetrics, bounds: LearnerBounds):
        self.backend = backend
        self.metrics = metrics
        self.bounds = bounds

    def fetch(self, ann: WeightsAnnouncement) -> Fetched:
        if not ann.path or not self.bounds.path_ok(ann.path):
            return Fetched.DECLINED
        file = Path(ann.path) / WEIGHTS_FILE
        if not file.exists():
            return Fetched.DECLINED
        try:
            blob = file.read_bytes()
            if digest_of(blob) != ann.digest:
                raise WeightsError(f"{file} does not match the announced digest")
            if self.backend.capabilities.weight_directories:
                self.backend.update_from_disk(ann.path, ann.version)  # the server reads it
            else:
                self.backend.load_weights(blob, ann.digest, ann.version)
        except Exception as exc:  # fall back to the chunked fetch; count it
            self.metrics.weight_errors.inc()
            logger.warning("version %d from disk failed (%s); fetching chunks", ann.version, exc)
            return Fetched.DECLINED
        return Fetched.LOADED

"""Weight transports, learner side: one file each, registered here by their config `type`
(`learner.weights`). Adding one = a file here, its entry below, and a member of the
`WeightsTransport` union in `learner/config.py`."""

from __future__ import annotations

from asyncrl.learner.config import LearnerConfig
from asyncrl.learner.engine import Engine
from asyncrl.learner.publishers.base import WeightPublisher
from asyncrl.learner.publishers.disk import DiskPublisher
from asyncrl.learner.publishers.nccl import NcclPublisher
from asyncrl.learner.publishers.zmq import ZmqPublisher

PUBLISHERS: dict[str, type[WeightPublisher]] = {
    "zmq": ZmqPublisher,
    "disk": DiskPublisher,
    "nccl": NcclPublisher,
}


def make_publisher(engine: Engine, hub, learner: LearnerConfig, model_path: str) -> WeightPublisher:
    """The configured transport's publisher (`hub`: None off rank 0). Create it before the
    hub starts serving: a transport may attach itself to the hub."""
    return PUBLISHERS[learner.weights.type](engine, hub, learner, model_path)

"""The weight fetchers and how they are chosen, against a scripted learner (no sockets):
zmq chunks are always the fallback, nccl is tried only when the learner offers it and the
backend declares it, disk only where the announced directory is visible, and a superseded
version is dropped rather than fetched another way. Also: every capability a backend
declares is implemented."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asyncrl.generators.backends.base import (
    Capabilities,
    DistributedGroups,
    InflightLoads,
    WeightDirectories,
)
from asyncrl.generators.bounds import LearnerBounds
from asyncrl.generators.config import LearnerLimits
from asyncrl.generators.metrics import GeneratorMetrics
from asyncrl.generators.updates import WeightUpdates
from asyncrl.generators.weights import verify_and_decode
from asyncrl.protocol.blob import digest_of, encode_header, write_version_dir
from asyncrl.protocol.messages import (
    NcclGroup,
    NcclJoin,
    NcclPlan,
    NcclPull,
    WeightsAnnouncement,
    WeightsChunk,
    WeightsRequest,
    Welcome,
)

CHUNK = 64


def blob_of(value: float) -> bytes:
    prefix, _, _ = encode_header({"w": ("F32", [40])})
    return prefix + torch.full((40,), value).numpy().tobytes()


class ScriptedLearner:
    """Answers control requests the way the hub does: chunks of the versions it holds,
    weight-update groups, nccl plans (`plan_reason`: why the next pull fails, if it does)."""

    def __init__(self):
        self.blobs: dict[int, bytes] = {}
        self.requests: list = []
        self.groups = 0
        self.plan_reason = ""
        self.missing_chunks = False

    def announce(self, version: int, path: str = "") -> WeightsAnnouncement:
        blob = self.blobs[version] = blob_of(float(version))
        chunks = -(-len(blob) // CHUNK)
        return WeightsAnnouncement(version, digest_of(blob), len(blob), chunks, path)

    def answer(self, msg):
        self.requests.append(msg)
        if isinstance(msg, WeightsRequest):
            if self.missing_chunks:
                return WeightsChunk(msg.version, msg.index, np.zeros(0, np.uint8), missing=True)
            part = self.blobs[msg.version][msg.index * CHUNK : (msg.index + 1) * CHUNK]
            return WeightsChunk(msg.version, msg.index, np.frombuffer(part, np.uint8))
        if isinstance(msg, NcclJoin):
            self.groups += 1
            return NcclGroup("127.0.0.1", 1234, f"grp{self.groups}", "gloo")
        assert isinstance(msg, NcclPull), msg
        reason, self.plan_reason = self.plan_reason, ""
        return NcclPlan(msg.version, "", missing=bool(reason), reason=reason)

    def asked(self, kind) -> int:
        return sum(isinstance(m, kind) for m in self.requests)


class FakeSession:
    """The session's request/reply surface over a `ScriptedLearner`."""

    generator_id = "g0"
    connected = True

    def __init__(self, learner: ScriptedLearner):
        self.learner = learner
        self.replies: list = []

    def request(self, msg):
        return self.learner.answer(msg)

    def send(self, msg) -> None:
        self.replies.append(self.learner.answer(msg))

    def reply(self):
        return self.replies.pop(0)

    def drain_replies(self, n: int) -> None:
        del self.replies[:n]


class FakeBackend:
    """Records how each version arrived."""

    name = "fake"
    vocab_size = 10

    def __init__(self, capabilities: Capabilities):
        self.capabilities = capabilities
        self.version = -1
        self.calls: list[tuple] = []

    def load_weights(self, blob, digest, version) -> None:
        w = verify_and_decode(blob, digest)["w"]
        self.calls.append(("blob", version, float(w[0])))
        self.version = version

    def update_from_disk(self, path, version) -> None:
        self.calls.append(("disk", version))
        self.version = version

    def nccl_world_size(self) -> int:
        return 2

    def join_update_group(self, address, port, group_name, backend, world_size) -> None:
        self.calls.append(("join", group_name))

    def update_from_buckets(self, plan, version, group_name) -> None:
        self.calls.append(("nccl", version, group_name))
        self.version = version


def welcome(nccl: bool) -> Welcome:
    return Welcome(0, -1, "", 0, 0, 1.0, 10, 1, 2, nccl=nccl)


def setup(capabilities: Capabilities, nccl_offered: bool, weights_dir: str = ""):
    learner, backend, metrics = ScriptedLearner(), FakeBackend(capabilities), GeneratorMetrics()
    bounds = LearnerBounds(LearnerLimits(), metrics, weights_dir)
    updates = WeightUpdates(backend, FakeSession(learner), metrics, 4, bounds)
    updates.connected(welcome(nccl_offered))
    return learner, backend, metrics, updates


def errors(metrics: GeneratorMetrics) -> float:
    return metrics.weight_errors._value.get()


NCCL = Capabilities(distributed_groups=True)


def test_a_failed_nccl_pull_falls_back_to_chunks_and_the_group_is_joined_afresh():
    learner, backend, metrics, updates = setup(NCCL, nccl_offered=True)
    learner.plan_reason = "group broken"
    updates.fetch(learner.announce(1))
    updates.fetch(learner.announce(2))
    assert backend.calls == [
        ("join", "grp1"),
        ("blob", 1, 1.0),
        ("join", "grp2"),
        ("nccl", 2, "grp2"),
    ]
    assert errors(metrics) == 1 and updates.pending is None
    assert metrics.policy_version._value.get() == 2


@pytest.mark.parametrize("capabilities,offered", [(NCCL, False), (Capabilities(), True)])
def test_nccl_only_when_offered_and_declared(capabilities, offered):
    learner, backend, metrics, updates = setup(capabilities, offered)
    updates.fetch(learner.announce(1))
    assert backend.calls == [("blob", 1, 1.0)]
    assert learner.asked(NcclJoin) == 0 and errors(metrics) == 0


def test_a_superseded_version_is_dropped_not_fetched_another_way():
    learner, backend, metrics, updates = setup(NCCL, nccl_offered=True)
    updates.pending = ann = learner.announce(1)
    learner.plan_reason = "version no longer held"
    updates.fetch(ann)
    assert learner.asked(WeightsRequest) == 0 and backend.calls == [("join", "grp1")]
    assert backend.version == -1 and updates.pending is None and errors(metrics) == 1
    # Over chunks too: the learner answers `missing` and the fetch stops there.
    learner, backend, metrics, updates = setup(Capabilities(), nccl_offered=False)
    learner.missing_chunks = True
    updates.pending = ann = learner.announce(1)
    updates.fetch(ann)
    assert backend.version == -1 and backend.calls == [] and updates.pending is None
    assert errors(metrics) == 1


@pytest.mark.parametrize("directories", [True, False])
def test_a_visible_version_directory_is_loaded_from_disk(tmp_path, directories):
    caps = Capabilities(weight_directories=directories)
    learner, backend, metrics, updates = setup(caps, nccl_offered=False, weights_dir=str(tmp_path))
    ann = learner.announce(3)
    ann.path = write_version_dir(str(tmp_path), 3, learner.blobs[3], str(tmp_path / "model"))
    updates.fetch(ann)
    # A backend that reads directories is handed the path; any other gets the bytes.
    assert backend.calls == [("disk", 3) if directories else ("blob", 3, 3.0)]
    assert learner.asked(WeightsRequest) == 0 and errors(metrics) == 0


def test_disk_falls_back_to_chunks_when_the_file_is_absent_or_wrong(tmp_path):
    learner, backend, metrics, updates = setup(Capabilities(), False, weights_dir=str(tmp_path))
    ann = learner.announce(1)
    ann.path = str(tmp_path / "elsewhere")  # another host's storage: not counted
    updates.fetch(ann)
    assert backend.calls == [("blob", 1, 1.0)] and errors(metrics) == 0
    ann = learner.announce(2)
    ann.path = write_version_dir(str(tmp_path), 2, blob_of(7.0), str(tmp_path))
    updates.fetch(ann)
    assert backend.calls[-1] == ("blob", 2, 2.0) and errors(metrics) == 1


@pytest.mark.parametrize("module,cls", [("hf", "HFBackend"), ("sglang", "SGLangBackend")])
def test_declared_capabilities_are_implemented(module, cls):
    import importlib

    backend = getattr(importlib.import_module(f"asyncrl.generators.backends.{module}"), cls)
    protocols = {
        "inflight_loads": InflightLoads,
        "weight_directories": WeightDirectories,
        "distributed_groups": DistributedGroups,
    }
    declared = [p for flag, p in protocols.items() if getattr(backend.capabilities, flag)]
    assert declared
    for protocol in declared:
        for name, member in vars(protocol).items():
            if callable(member) and not name.startswith("_"):
                assert callable(getattr(backend, name, None)), f"{cls} lacks {name}"

"""Generators bound what the learner sends against their own limits (`generators/bounds.py`):
a weights size past the configured maximum, an impossible chunk count, an oversize chunk, a
disk path outside the weights directory (or with `..`), a lease whose group size, prompt or
max_new_tokens exceed the limits, a welcome with unusable timings: each is counted by reason,
logged at most once per reason per interval, and not acted on."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from asyncrl.generators.backends.base import Capabilities
from asyncrl.generators.bounds import LearnerBounds
from asyncrl.generators.config import LearnerLimits
from asyncrl.generators.metrics import REJECT_REASONS, GeneratorMetrics
from asyncrl.generators.updates import WeightUpdates
from asyncrl.protocol.blob import MAX_WEIGHT_CHUNK_BYTES, write_version_dir
from asyncrl.protocol.messages import Lease, WeightsChunk, WeightsRequest, Welcome
from asyncrl.protocol.settings import SamplingParams
from tests.unit.test_fetchers import FakeBackend, FakeSession, ScriptedLearner, blob_of


def rejected(metrics: GeneratorMetrics, reason: str) -> float:
    return metrics.rejected.labels(reason=reason)._value.get()


def bounds(weights_dir: str = "", **limits) -> tuple[LearnerBounds, GeneratorMetrics]:
    metrics = GeneratorMetrics()
    return LearnerBounds(LearnerLimits(**limits), metrics, weights_dir), metrics


def test_every_reason_has_a_series_from_the_start():
    _, metrics = bounds()
    for reason in REJECT_REASONS:
        assert rejected(metrics, reason) == 0.0


def test_an_oversize_or_impossibly_chunked_announcement_is_never_pending():
    learner, metrics = ScriptedLearner(), GeneratorMetrics()
    # The blob of one 40-float tensor is 112 bytes (header) + 160 (data) = 272 bytes: a
    # 200-byte limit refuses it.
    b = LearnerBounds(LearnerLimits(max_model_bytes=200), metrics)
    updates = WeightUpdates(FakeBackend(Capabilities()), FakeSession(learner), metrics, 4, b)
    ann = learner.announce(1)
    assert ann.size > 200
    updates.latest(Welcome(0, 1, ann.digest, ann.size, ann.chunks, 1.0, 10, 1, 2))
    assert updates.pending is None and rejected(metrics, "weights_size") == 1
    # Chunks: at least ceil(size / 32 MiB) = 1, at most one per byte.
    b2, m2 = bounds()
    ann.chunks = 0
    assert not b2.announcement_ok(ann)
    ann.chunks = ann.size + 1
    assert not b2.announcement_ok(ann)
    ann.chunks = ann.size
    assert b2.announcement_ok(ann) and rejected(m2, "chunks") == 2
    # A size the host cannot hold (default limit: physical memory).
    ann.size, ann.chunks = 1 << 60, (1 << 60) // MAX_WEIGHT_CHUNK_BYTES
    assert not b2.announcement_ok(ann) and rejected(m2, "weights_size") == 1


def test_an_oversize_chunk_drops_the_version():
    b, metrics = bounds()
    chunk = WeightsChunk(1, 0, np.zeros(MAX_WEIGHT_CHUNK_BYTES + 1, np.uint8))
    assert not b.chunk_ok(chunk) and rejected(metrics, "chunk_bytes") == 1
    assert b.chunk_ok(WeightsChunk(1, 0, np.zeros(MAX_WEIGHT_CHUNK_BYTES, np.uint8)))


def test_disk_paths_must_lie_under_the_weights_dir(tmp_path, monkeypatch):
    root = tmp_path / "weights"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    b, metrics = bounds(str(root))
    assert b.path_ok(str(root / "v3"))
    monkeypatch.chdir(tmp_path)
    assert b.path_ok("weights/v3")  # relative to the working directory
    bad = [
        "relative/v3",
        f"{root}/../outside",
        str(tmp_path / "outside"),
        str(root / "link"),  # resolves outside
        "/etc",
    ]
    for path in bad:
        assert not b.path_ok(path), path
    assert rejected(metrics, "path") == len(bad)
    # No weights dir configured: every disk path is refused.
    b2, m2 = bounds()
    assert not b2.path_ok(str(root / "v3")) and rejected(m2, "path") == 1


def test_a_refused_disk_path_falls_back_to_chunks(tmp_path):
    learner, metrics = ScriptedLearner(), GeneratorMetrics()
    b = LearnerBounds(LearnerLimits(), metrics, str(tmp_path / "allowed"))
    backend = FakeBackend(Capabilities(weight_directories=True))
    updates = WeightUpdates(backend, FakeSession(learner), metrics, 4, b)
    updates.connected(Welcome(0, -1, "", 0, 0, 1.0, 10, 1, 2))
    ann = learner.announce(2)
    ann.path = write_version_dir(str(tmp_path / "other"), 2, blob_of(2.0), str(tmp_path))
    updates.fetch(ann)
    # Not handed to the server by path: the bytes came as chunks and were verified.
    assert backend.calls == [("blob", 2, 2.0)] and learner.asked(WeightsRequest) > 0
    assert rejected(metrics, "path") == 1


def lease(group_size=4, max_new_tokens=16, prompt_len=5) -> Lease:
    params = SamplingParams(max_new_tokens=max_new_tokens)
    return Lease(7, np.arange(prompt_len, dtype=np.int32), group_size, params, 0.0, 0)


@pytest.mark.parametrize(
    "kwargs,reason",
    [
        ({"group_size": 9}, "group_size"),
        ({"group_size": 0}, "group_size"),
        ({"max_new_tokens": 33}, "max_new_tokens"),
        ({"prompt_len": 11}, "prompt_length"),
        ({"prompt_len": 0}, "prompt_length"),
    ],
)
def test_leases_past_the_limits_are_refused(kwargs, reason):
    b, metrics = bounds(max_group_size=8, max_new_tokens=32, max_prompt_tokens=10)
    assert b.lease_ok(lease())
    assert b.lease_ok(lease(group_size=8, max_new_tokens=32, prompt_len=10))
    assert not b.lease_ok(lease(**kwargs))
    assert rejected(metrics, reason) == 1


@pytest.mark.parametrize(
    "hb,lease_s,ports",
    [(0.0, 1.0, (1, 2)), (1.0, -1.0, (1, 2)), (1.0, 1.0, (0, 2)), (1.0, 1.0, (1, 70000))],
)
def test_a_welcome_with_unusable_timings_or_ports_is_refused(hb, lease_s, ports):
    b, metrics = bounds()
    assert b.welcome_ok(Welcome(0, -1, "", 0, 0, 1.0, 10, 1, 2, lease_seconds=4.0))
    w = Welcome(0, -1, "", 0, 0, hb, 10, ports[0], ports[1], lease_seconds=lease_s)
    assert not b.welcome_ok(w) and rejected(metrics, "welcome") == 1


def test_rejections_are_logged_once_per_reason_per_interval(caplog):
    b, metrics = bounds(max_group_size=2)
    with caplog.at_level(logging.WARNING, logger="asyncrl.generators.bounds"):
        for _ in range(50):
            b.lease_ok(lease(group_size=3))
        b.lease_ok(lease(group_size=1, max_new_tokens=1 << 30))
    # 50 group-size rejections: one line; the other reason gets its own.
    assert len(caplog.records) == 2
    assert rejected(metrics, "group_size") == 50

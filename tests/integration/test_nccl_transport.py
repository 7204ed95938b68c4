"""The nccl weight transport end to end on CPU: the hub's publisher broadcasts published
versions over a real gloo group into a server process that receives them the way SGLang's
weight updater does (`fake_weight_server.py`), driven by the SGLang backend's own calls.
The same path against a real SGLang server is `test_sglang_live.py` (GPU)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import xxhash

from asyncrl.generators.backends.sglang import SGLangBackend, SGLangConfig
from asyncrl.launch.config import load_config
from asyncrl.learner.metrics import LearnerMetrics
from asyncrl.learner.publishers.nccl import NcclServer
from asyncrl.learner.weights import WeightsStore, serialize_named_tensors
from asyncrl.protocol.codec import decode, encode
from asyncrl.protocol.messages import NcclJoin, NcclPull
from asyncrl.protocol.sockets import free_port

ROOT = Path(__file__).resolve().parents[2]


def _state(url: str) -> dict:
    with urllib.request.urlopen(url + "/state", timeout=30) as r:
        return json.loads(r.read())


def _hashes(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    return {
        n: xxhash.xxh3_64(t.contiguous().view(torch.uint8).numpy()).hexdigest()
        for n, t in tensors.items()
    }


def _version(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # a: 1.2 MB, larger than the 1 MiB bucket -> a bucket of its own. b: 6 bytes of bf16, so
    # c (fp32) would sit at offset 6 of b's bucket, not a multiple of 4 -> c starts a new one
    # and d joins c. Buckets: [a], [b], [c, d].
    return {
        "a.weight": torch.randn(600, 512, generator=g),
        "b.bias": torch.randn(3, generator=g).to(torch.bfloat16),
        "c.weight": torch.randn(5, generator=g),
        "d.weight": torch.randn(2, 2, generator=g),
    }


@pytest.fixture
def setup(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 19}))
    port = free_port("127.0.0.1")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests/integration/fake_weight_server.py"),
            str(port),
            str(tmp_path),
        ],
        env=env,
    )
    cfg = load_config(
        "tiny-cpu",
        [
            "learner.weights.type=nccl",
            f"learner.weights.bucket_bytes={1 << 20}",
            "learner.weights.timeout_seconds=20",
        ],
    )
    store = WeightsStore(cfg.learner.weight_chunk_bytes)
    metrics = LearnerMetrics()
    publisher = NcclServer(cfg.learner.weights, cfg.learner.bind_host, store, metrics, "cpu")
    sg = SGLangConfig(url=f"http://127.0.0.1:{port}", startup_timeout=60)
    backend = SGLangBackend(str(tmp_path), sg)
    yield backend, publisher, store, metrics, proc
    publisher.close()
    proc.kill()
    proc.wait()


def _pull(backend, publisher, group, version: int):
    # Through the codec both ways, as on the wire (nested lists are refused there).
    request = decode(encode(NcclPull("g0", version, group.group_name)))
    plan = decode(encode(publisher.pull(request)))
    if not plan.missing:
        backend.update_from_buckets(plan, version, group.group_name)
    return plan


def test_versions_reach_the_server_bucket_by_bucket(setup):
    backend, publisher, store, metrics, _ = setup
    world = backend.nccl_world_size()
    assert world == 2  # the learner + one tensor-parallel rank
    group = publisher.join(NcclJoin("g0", world))
    assert group.backend == "gloo" and not group.error
    backend.join_update_group(group.address, group.port, group.group_name, group.backend, world)

    for version, seed in ((1, 1), (2, 2)):
        tensors = _version(seed)
        store.put(version, serialize_named_tensors(tensors))
        plan = _pull(backend, publisher, group, version)
        assert plan.buckets() == [
            (["a.weight"], ["float32"], [[600, 512]]),
            (["b.bias"], ["bfloat16"], [[3]]),
            (["c.weight", "d.weight"], ["float32", "float32"], [[5], [2, 2]]),
        ]
        state = _state(backend.url)
        assert state["tensors"] == _hashes(tensors), f"version {version} arrived corrupt"
        assert state["version"] == str(version) and backend.version == version
    # Everything of both versions went over the group, and the channel's blob was released.
    sent = sum(t.numel() * t.element_size() for t in _version(1).values())
    # Counted by the channel's thread once its side of the broadcast returns, which can be a
    # moment after the server has the version (a loaded machine showed the gap).
    deadline = time.monotonic() + 10
    while metrics.weight_bytes_served._value.get() < 2 * sent and time.monotonic() < deadline:
        time.sleep(0.01)
    assert metrics.weight_bytes_served._value.get() == 2 * sent
    assert store.latest.idle()

    # Version 1 was superseded twice over (the store holds the latest two): not broadcast.
    store.put(3, serialize_named_tensors(_version(3)))
    gone = publisher.pull(NcclPull("g0", 1, group.group_name))
    assert gone.missing and gone.reason == "version no longer held"

    # Joining again (a generator restart) replaces the group; the server destroys the old one.
    again = publisher.join(NcclJoin("g0", world))
    backend.join_update_group(again.address, again.port, again.group_name, again.backend, world)
    assert _state(backend.url)["groups"] == [again.group_name]
    _pull(backend, publisher, again, 3)
    assert _state(backend.url)["tensors"] == _hashes(_version(3))
    stale = publisher.pull(NcclPull("g0", 3, group.group_name))
    assert stale.missing and "join again" in stale.reason


def test_a_dead_server_fails_its_channel_only(setup):
    backend, publisher, store, metrics, proc = setup
    group = publisher.join(NcclJoin("g0", 2))
    backend.join_update_group(group.address, group.port, group.group_name, group.backend, 2)
    proc.kill()
    proc.wait()
    store.put(1, serialize_named_tensors(_version(1)))
    # The learner broadcasts into a group whose other rank is gone: the channel fails within
    # its timeout, is counted, and the next pull tells the generator to join again.
    plan = publisher.pull(NcclPull("g0", 1, group.group_name))
    assert not plan.missing
    deadline = time.time() + 60
    while metrics.weight_broadcast_failures._value.get() < 1:
        assert time.time() < deadline, "a broadcast to a dead peer never failed"
        time.sleep(0.2)
    assert store.latest.idle()  # the blob is free for reuse
    again = publisher.pull(NcclPull("g0", 1, group.group_name))
    assert again.missing and "failed" in again.reason


EXIT_SCRIPT = """
import json, sys
import torch
from asyncrl.generators.backends.sglang import SGLangBackend, SGLangConfig
from asyncrl.launch.config import load_config
from asyncrl.learner.metrics import LearnerMetrics
from asyncrl.learner.publishers.nccl import NcclServer
from asyncrl.learner.weights import WeightsStore, serialize_named_tensors
from asyncrl.protocol.messages import NcclJoin, NcclPull
from asyncrl.protocol.sockets import free_port
url, model = sys.argv[1], sys.argv[2]
store = WeightsStore(1 << 20)
lc = load_config("tiny-cpu", ["learner.weights.type=nccl"]).learner
pub = NcclServer(lc.weights, lc.bind_host, store, LearnerMetrics(), "cpu")
b = SGLangBackend(model, SGLangConfig(url=url))
g = pub.join(NcclJoin("g", 2))
b.join_update_group(g.address, g.port, g.group_name, g.backend, 2)
store.put(1, serialize_named_tensors({"w": torch.ones(10)}))
b.update_from_buckets(pub.pull(NcclPull("g", 1, g.group_name)), 1, g.group_name)
pub.close()
"""


def test_learner_exits_cleanly_after_broadcasting(setup, tmp_path):
    # A process that exits while a group's threads are being torn down aborts ("terminate
    # called without an active exception", exit -6): seen at the end of an `asyncrl local`
    # run on a GPU. `close` waits for every group to be destroyed.
    backend = setup[0]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-c", EXIT_SCRIPT, backend.url, backend.model_path]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_run_publishes_every_version_over_the_group(small_overrides, tiny_cache):
    """`asyncrl local` with the nccl transport and an SGLang generator whose server is the
    fake (sampling with the hf backend from the weights it received): every message crosses
    the wire, and no version falls back to chunks."""
    from asyncrl.launch.tiny import setup_tiny_assets
    from tests.integration.conftest import SMALL_TINY, run_cli

    cfg = load_config(None, SMALL_TINY + [f"tiny.cache_dir={tiny_cache}"])
    model = setup_tiny_assets(cfg.tiny).model_path
    port = free_port("127.0.0.1")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    server = ROOT / "tests/integration/fake_weight_server.py"
    proc = subprocess.Popen([sys.executable, str(server), str(port), model], env=env)
    try:
        code, events, stderr = run_cli(
            [
                "local",
                *small_overrides,
                "train.steps=6",
                "local.generators=1",
                "generator.backend=sglang",
                f"generator.sglang.url=http://127.0.0.1:{port}",
                "learner.weights.type=nccl",
            ],
            timeout=600,
        )
        assert code == 0, stderr[-4000:]
        summary = events[-1]
        assert summary["event"] == "summary" and summary["policy_version"] == 6
        assert summary["generators_seen"] == ["generator-0"]
        assert "over nccl failed" not in stderr, stderr[-4000:]
        # Loads are counted in the generators' summary lines ("(3 loads: 3 over nccl; ...").
        loaded = sum(int(n) for n in re.findall(r"(\d+) over nccl", stderr))
        assert loaded >= 3, stderr[-4000:]  # version 0 and at least two of the six updates
        state = _state(f"http://127.0.0.1:{port}")
        assert state["updates"] >= loaded  # one request per bucket: the tiny model is one
        assert int(state["version"]) >= 2
    finally:
        proc.kill()
        proc.wait()

"""A streamed version reaches a generator while the learner is still writing it.

The real hub (its service thread, wake-up socket and held chunk requests) and the real
generator loop talk over loopback; the learner side writes the version tensor by tensor with
pauses, as a ZeRO-3 gather does, and the test checks that the generator asked for chunks
before the last tensor was written, that it got none that was not final, and that what it
loaded is the version, byte for byte.
"""

from __future__ import annotations

import threading
import time

import torch

from asyncrl.generators.backends.base import Capabilities
from asyncrl.generators.metrics import GeneratorMetrics
from asyncrl.generators.weights import verify_and_decode
from asyncrl.generators.worker import GeneratorWorker
from asyncrl.launch.config import load_config
from asyncrl.learner.weights import BlobWriter
from asyncrl.protocol.blob import digest_of


class RecordingBackend:
    """Loads weights by decoding them (digest checked) and never generates: the hub denies
    leases to a generator without weights (-1), then to one holding version 1 while the hub
    itself is at version 0 (nothing was trained), so the worker only fetches weights."""

    name = "recording"
    vocab_size = 100
    capabilities = Capabilities()

    def __init__(self):
        self.version = -1
        self.loaded: dict[int, dict[str, torch.Tensor]] = {}

    def generate(self, prompt_ids, n, params):
        raise AssertionError("no lease is issued in this test")

    def load_weights(self, blob, digest, version):
        self.loaded[version] = {k: v.clone() for k, v in verify_and_decode(blob, digest).items()}
        self.version = version

    def close(self) -> None:
        pass


def _hub(small_overrides):
    from transformers import AutoTokenizer

    from asyncrl.launch.assets import resolve_data
    from asyncrl.learner.data import PromptSource, load_rows
    from asyncrl.learner.hub import Hub
    from asyncrl.learner.metrics import LearnerMetrics

    cfg = load_config(
        "tiny-cpu",
        small_overrides
        + [
            "learner.bind_host=127.0.0.1",
            "learner.control_port=0",
            "learner.rollouts_port=0",
            "learner.weights_port=0",
            f"learner.weight_chunk_bytes={64 << 10}",
        ],
    )
    data = resolve_data(cfg)
    tok = AutoTokenizer.from_pretrained(data.model_path)
    prompts = PromptSource(load_rows(data.train_path), tok, cfg.data.prompt_field, seed=0)
    hub = Hub(cfg, prompts, tok, LearnerMetrics())
    hub.start()
    return hub


def test_chunks_are_fetched_while_the_version_is_written(small_overrides):
    torch.manual_seed(0)
    # 8 tensors of 256 KiB: 4 chunks each, 33 chunks with the header.
    state = {f"layer{i}.weight": torch.randn(256, 256) for i in range(8)}
    hub = _hub(small_overrides)
    backend = RecordingBackend()
    worker = GeneratorWorker(
        backend, "g0", hub.endpoints["control"], GeneratorMetrics(), reconnect_seconds=5
    )
    th = threading.Thread(target=worker.run, daemon=True)
    th.start()
    try:
        deadline = time.time() + 20
        while not worker.connected:
            assert time.time() < deadline, "the generator never connected"
            time.sleep(0.01)
        writer = BlobWriter({n: (tuple(t.shape), t.dtype) for n, t in state.items()})
        pub = hub.begin_publish(1, writer)
        held_seen = False
        for name, tensor in state.items():
            # Each pause outlasts the hub's 1 ms turn: requests for unwritten chunks are held.
            time.sleep(0.1)
            held_seen = held_seen or hub.weights.deferred
            writer.write(name, tensor)
        assert 1 not in backend.loaded  # the last chunk waits for the digest
        blob = writer.finish()
        hub.finish_publish(pub)
        while 1 not in backend.loaded:
            assert time.time() < deadline, "version 1 was never loaded"
            time.sleep(0.01)
    finally:
        worker.stop.set()
        th.join(10)
        hub.stop()
    assert held_seen, "no chunk request was ever held: the fetch did not overlap the writing"
    assert blob.digest == digest_of(bytes(blob))
    for name, tensor in state.items():
        assert torch.equal(backend.loaded[1][name], tensor), name
    served = hub.metrics.weight_bytes_served._value.get()
    assert served == len(blob)  # every chunk exactly once: nothing resent, nothing skipped

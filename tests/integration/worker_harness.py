"""A scripted learner and a stub backend for driving a real `GeneratorWorker` on loopback.

The learner is a thread speaking the real wire protocol over real sockets, so each test
controls exactly when replies and announcements arrive; the backend's `generate` blocks on the
test's events (the hf backend is tested elsewhere). Used by test_worker.py and
test_worker_batches.py.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import torch
import zmq

from asyncrl.generators.backends.base import Capabilities, Sample
from asyncrl.generators.metrics import GeneratorMetrics
from asyncrl.generators.weights import verify_and_decode
from asyncrl.generators.worker import GeneratorWorker
from asyncrl.learner.weights import WeightsStore, serialize_named_tensors
from asyncrl.protocol.messages import (
    Ack,
    Heartbeat,
    Hello,
    Lease,
    LeaseDenied,
    LeaseRequest,
    LeaseReturn,
    WeightsAnnouncement,
    WeightsChunk,
    WeightsRequest,
    Welcome,
)
from asyncrl.protocol.settings import SamplingParams
from asyncrl.protocol.sockets import SocketFactory, recv, send


class ScriptedLearner:
    """Issues `leases` leases, then denies. Records when each lease request arrived, so a test
    can tell a prefetched request from a fresh one."""

    def __init__(self, leases: int, lease_seconds: float = 60.0):
        self.leases, self.lease_seconds = leases, lease_seconds
        self.factory = SocketFactory()
        self.control = self.factory.socket(zmq.ROUTER, server=True)
        self.rollouts = self.factory.socket(zmq.PULL, server=True)
        self.pub = self.factory.socket(zmq.PUB, server=True)
        self.ports = [
            s.bind_to_random_port("tcp://127.0.0.1")
            for s in (self.control, self.rollouts, self.pub)
        ]
        self.issued = 0
        self.requests: list[float] = []  # arrival time of each LeaseRequest
        self.pushed: list[int] = []  # lease ids of received groups, in order
        self.groups: list = []  # the received groups themselves
        self.returned: list[int] = []
        self.chunk_requests = 0
        self.hellos: list[Hello] = []
        self.heartbeats: list[Heartbeat] = []
        self.deny_hello = 0  # lease requests to deny with "hello" (a learner that restarted)
        self.on_request = None  # called with the request number, in the learner thread
        self.store = WeightsStore(chunk_bytes=64)
        self._announce: list[WeightsAnnouncement] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.ports[0]}"

    def publish(self, version: int, digest: bool = True) -> bytes:
        """Publish a small state as `version` and announce it (from the learner thread);
        `digest=False` announces it the way a streamed version starts."""
        blob = serialize_named_tensors({"w": torch.full((40,), float(version))})
        pub = self.store.put(version, blob)
        ann = WeightsAnnouncement(version, pub.digest if digest else "", len(blob), pub.chunks)
        self._announce.append(ann)
        return blob

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        poller.register(self.rollouts, zmq.POLLIN)
        while not self._stop.is_set():
            while self._announce:
                send(self.pub, self._announce.pop(0))
            events = dict(poller.poll(20))
            if self.rollouts in events:
                _, group = recv(self.rollouts)
                self.groups.append(group)
                self.pushed.append(int(group.lease_id, 16))
            if self.control in events:
                prefix, msg = recv(self.control, routed=True)
                send(self.control, self._reply(msg), prefix=prefix)

    def _reply(self, msg):
        if isinstance(msg, Hello):
            self.hellos.append(msg)
            return Welcome(
                learner_version=0,
                weights_version=-1,
                weights_digest="",
                weights_size=0,
                weights_chunks=0,
                heartbeat_seconds=0.2,
                vocab_size=100,
                rollouts_port=self.ports[1],
                weights_port=self.ports[2],
                lease_seconds=self.lease_seconds,
                session="token-1",
            )
        if isinstance(msg, LeaseRequest):
            self.requests.append(time.perf_counter())
            if self.on_request is not None:
                self.on_request(len(self.requests))
            if self.deny_hello:
                self.deny_hello -= 1
                return LeaseDenied("hello", 0.05, 0)
            if self.issued >= self.leases:
                return LeaseDenied("gate", 0.05, 0)
            self.issued += 1
            params = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=4)
            lease_id = f"{self.issued:032x}"  # lease n is n in hex: tests read it back
            return Lease(lease_id, np.array([1, 2], np.int32), 2, params, 0.0, 0)
        if isinstance(msg, WeightsRequest):
            self.chunk_requests += 1
            pub = self.store.get(msg.version)
            return WeightsChunk(
                msg.version, msg.index, np.frombuffer(pub.chunk(msg.index), np.uint8)
            )
        if isinstance(msg, Heartbeat):
            self.heartbeats.append(msg)
        if isinstance(msg, LeaseReturn):
            self.returned += [int(x, 16) for x in msg.lease_ids]
        assert isinstance(msg, (LeaseReturn, Heartbeat)), msg
        return Ack(0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for s in (self.control, self.rollouts, self.pub):
            s.close(0)


class StubBackend:
    """Generates `n` two-token samples; `gate[k]` (if set) must be released before the k-th
    group completes, so a test decides what happens while a group is being generated."""

    name = "stub"
    vocab_size = 100
    capabilities = Capabilities()

    def __init__(self, seconds: float = 0.0):
        self.version = 0
        self.seconds = seconds
        self.calls = 0
        self.gates: dict[int, threading.Event] = {}
        self.loaded: list[tuple[int, float]] = []
        self.finished: list[float] = []  # when each generate call returned

    def _call(self) -> None:
        """One generate call: held at its gate if the test set one, then `seconds` long."""
        self.calls += 1
        if self.calls in self.gates:
            assert self.gates[self.calls].wait(10)
        time.sleep(self.seconds)
        self.finished.append(time.perf_counter())

    def generate(self, prompt_ids, n, params):
        self._call()
        tok = np.array([5, 6], np.int32)
        return [Sample(tok, np.zeros(2, np.float32), np.full(2, self.version), "length")] * n

    def load_weights(self, blob, digest, version):
        tensors = verify_and_decode(blob, digest)
        self.loaded.append((version, float(tensors["w"][0])))
        self.version = version

    def health(self) -> tuple[bool, str]:
        return True, "stub"

    def close(self) -> None:
        pass


def run_worker(worker: GeneratorWorker) -> threading.Thread:
    th = threading.Thread(target=worker.run, daemon=True)
    th.start()
    return th


def until(cond, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


def make_worker(
    backend, learner: ScriptedLearner, prefetch: bool = True, groups_per_batch: int = 1
) -> GeneratorWorker:
    return GeneratorWorker(
        backend,
        "g0",
        learner.address,
        GeneratorMetrics(),
        reconnect_seconds=5,
        prefetch_lease=prefetch,
        groups_per_batch=groups_per_batch,
    )


def serve_groups(worker: GeneratorWorker, learner: ScriptedLearner, n: int) -> None:
    """Run the worker until the learner has received `n` groups, then stop both."""
    th = run_worker(worker)
    try:
        until(lambda: len(learner.pushed) == n)
        worker.stop.set()
        th.join(10)
    finally:
        learner.close()

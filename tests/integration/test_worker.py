"""The generator loop against a scripted learner on loopback: lease prefetch, its interplay
with weight fetches, and handing a prefetched lease back on shutdown.

The scripted learner and stub backend are in worker_harness.py.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from asyncrl.generators.backends.base import Capabilities, Sample
from asyncrl.generators.config import LearnerLimits
from asyncrl.generators.metrics import GeneratorMetrics
from asyncrl.generators.worker import GeneratorWorker
from asyncrl.protocol.messages import Finished
from tests.integration.worker_harness import (
    ScriptedLearner,
    StubBackend,
    make_worker,
    run_worker,
    serve_groups,
    until,
)


def _prefetched(learner: ScriptedLearner, backend: StubBackend, k: int) -> bool:
    """Whether the request for lease k+1 (0-based request k) arrived before group k
    (1-based generate call k) had finished generating."""
    return learner.requests[k] < backend.finished[k - 1]


def _open(backend: StubBackend, k: int) -> None:
    """Let group k finish (if the test holds it)."""
    if k in backend.gates:
        backend.gates[k].set()


def test_next_lease_is_requested_before_the_current_group_is_pushed():
    # Group k is held until request k+1 arrives, so no timing decides it: with prefetch the
    # request goes out as the group starts; without, the group's gate would wait in vain.
    learner, backend = ScriptedLearner(leases=3), StubBackend()
    backend.gates = {k: threading.Event() for k in (1, 2, 3)}
    learner.on_request = lambda n: _open(backend, n - 1)
    worker = make_worker(backend, learner)
    serve_groups(worker, learner, 3)
    assert learner.pushed == [1, 2, 3]
    assert [_prefetched(learner, backend, k) for k in (1, 2, 3)] == [True, True, True]
    assert learner.returned == []


def test_without_prefetch_each_request_follows_the_previous_group():
    learner, backend = ScriptedLearner(leases=3), StubBackend(seconds=0.01)
    worker = make_worker(backend, learner, prefetch=False)
    serve_groups(worker, learner, 3)
    assert [_prefetched(learner, backend, k) for k in (1, 2)] == [False, False]


def test_no_prefetch_while_a_group_takes_over_a_quarter_of_the_lease():
    # lease_seconds 0.2: a 0.08 s group exceeds 0.05 s, so after the first group (the only
    # one prefetched for, when nothing had been timed yet) every request waits for the group.
    learner, backend = ScriptedLearner(leases=3, lease_seconds=0.2), StubBackend(seconds=0.08)
    backend.gates = {1: threading.Event()}  # the first group waits for the prefetch
    learner.on_request = lambda n: _open(backend, n - 1)
    worker = make_worker(backend, learner)
    serve_groups(worker, learner, 3)
    assert [_prefetched(learner, backend, k) for k in (1, 2, 3)] == [True, False, False]


def test_stop_hands_the_prefetched_lease_back():
    learner, backend = ScriptedLearner(leases=5), StubBackend()
    backend.gates[1] = threading.Event()
    worker = make_worker(backend, learner)
    th = run_worker(worker)
    try:
        until(lambda: learner.issued == 2)  # lease 1 in generation, lease 2 prefetched
        worker.stop.set()
        backend.gates[1].set()
        th.join(10)
        assert not th.is_alive()
        until(lambda: learner.returned == [2])
    finally:
        learner.close()
    assert learner.pushed == [1]  # the current group is finished, the prefetched one returned


def test_weights_fetched_while_the_prefetched_lease_waits_lose_nothing():
    # The prefetched reply (lease 2) is queued on the control socket ahead of the weight
    # chunks fetched after group 1: the fetch must set it aside, not drop it as a stray.
    learner, backend = ScriptedLearner(leases=2), StubBackend()
    backend.gates[1] = threading.Event()
    learner.on_request = lambda k: learner.publish(1) if k == 2 else None
    worker = make_worker(backend, learner)
    th = run_worker(worker)
    try:
        until(lambda: learner.issued == 2)
        time.sleep(0.3)  # the announcement reaches the subscriber before group 1 ends
        backend.gates[1].set()
        until(lambda: len(learner.pushed) == 2)
        worker.stop.set()
        th.join(10)
    finally:
        learner.close()
    assert learner.chunk_requests >= 1
    assert backend.loaded == [(1, 1.0)]
    # Lease 2 (the learner has no other) was taken from where the fetch set it aside;
    # dropped as a stray, the worker would wait on a reply that never comes.
    assert learner.pushed == [1, 2]


class DecodingBackend(StubBackend):
    """Calls the worker's between-tokens hook every 10 ms while a group generates, as the hf
    backend does between decode steps, and records the version at each step."""

    capabilities = Capabilities(inflight_loads=True)

    def __init__(self):
        super().__init__()
        self.between_tokens = None  # set by the worker (in-flight updates on)
        self.steps: list[int] = []

    def set_inflight_hook(self, hook, mode, check_every):
        self.between_tokens = hook

    def generate(self, prompt_ids, n, params):
        self.calls += 1
        gate = self.gates.get(self.calls)
        while gate is not None and not gate.is_set():
            self.between_tokens()
            self.steps.append(self.version)
            time.sleep(0.01)
        tok = np.array([5, 6], np.int32)
        return [Sample(tok, np.zeros(2, np.float32), np.full(2, self.version), "length")] * n


def test_inflight_loads_wait_for_a_streamed_version_to_be_complete():
    # Announced as its writing starts (no digest), a version is not fetched in the middle of
    # a generation: that would stall decoding while the learner writes. Its second
    # announcement, complete, is loaded at the next decode step.
    learner, backend = ScriptedLearner(leases=1), DecodingBackend()
    backend.gates[1] = threading.Event()
    worker = GeneratorWorker(
        backend,
        "g0",
        learner.address,
        GeneratorMetrics(),
        reconnect_seconds=5,
        inflight_updates="continue",
    )
    th = run_worker(worker)
    try:
        until(lambda: len(backend.steps) > 0)
        learner.publish(1, digest=False)
        time.sleep(0.3)  # 30 decode steps with the announcement received
        assert learner.chunk_requests == 0 and backend.version == 0
        learner.publish(1)
        until(lambda: backend.loaded == [(1, 1.0)])
        assert not backend.gates[1].is_set()  # loaded in flight, inside group 1
        backend.gates[1].set()
        until(lambda: learner.pushed == [1])
        worker.stop.set()
        th.join(10)
    finally:
        learner.close()
    assert backend.steps[-1] == 1


def test_stop_is_prompt_when_the_learner_already_exited():
    # `asyncrl local` stops generators after the learner has gone: the finished group and the
    # prefetched lease have nowhere to go, and waiting out reconnect_seconds (30 s here) for
    # them would hold up shutdown.
    learner, backend = ScriptedLearner(leases=5), StubBackend()
    backend.gates[1] = threading.Event()
    worker = GeneratorWorker(
        backend, "g0", learner.address, GeneratorMetrics(), reconnect_seconds=30
    )
    th = run_worker(worker)
    until(lambda: learner.issued == 2)  # lease 1 in generation, lease 2 prefetched
    learner.close()
    worker.stop.set()
    t = time.monotonic()
    backend.gates[1].set()
    th.join(15)
    assert not th.is_alive()
    assert time.monotonic() - t < 8, time.monotonic() - t


def test_a_hello_denial_says_hello_again_and_heartbeats_name_the_session():
    learner, backend = ScriptedLearner(leases=1), StubBackend(seconds=0.6)
    learner.deny_hello = 1
    worker = make_worker(backend, learner, prefetch=False)
    serve_groups(worker, learner, 1)
    # Hello on connecting (no session yet), hello again on the denial presenting the token
    # the first welcome gave; then the lease, generated and pushed.
    assert [h.session for h in learner.hellos] == ["", "token-1"]
    assert learner.pushed == [1]
    # Heartbeats (every 0.2 s, from their own socket) name the session and, during the
    # 0.6 s generation, the lease.
    assert learner.heartbeats and {h.session for h in learner.heartbeats} == {"token-1"}
    assert [f"{1:032x}"] in [h.lease_ids for h in learner.heartbeats]


def test_a_published_finish_ends_the_loop_without_reconnecting():
    learner, backend = ScriptedLearner(leases=1), StubBackend()
    metrics = GeneratorMetrics()
    worker = GeneratorWorker(backend, "g0", learner.address, metrics, reconnect_seconds=5)
    th = run_worker(worker)
    try:
        until(lambda: learner.pushed == [1])  # then denied: the worker waits on announcements
        assert worker.healthy() == (True, "ok version=0")
        learner._announce.append(Finished(1))
        th.join(10)
        assert not th.is_alive() and worker.finished == 1
        assert worker.healthy() == (True, "finished: the learner's run ended at version 1")
    finally:
        learner.close()
    assert metrics.reconnects._value.get() == 0


def test_a_finish_read_only_after_the_learner_went_silent_still_ends_the_loop():
    # Announced while the group was being generated, then the learner exited: the group
    # cannot be pushed (the learner is gone), and the announcement waiting in the
    # subscription says why, so the worker exits instead of reconnecting.
    learner, backend = ScriptedLearner(leases=1), StubBackend()
    backend.gates[1] = threading.Event()
    metrics = GeneratorMetrics()
    worker = GeneratorWorker(
        backend, "g0", learner.address, metrics, reconnect_seconds=2, prefetch_lease=False
    )
    th = run_worker(worker)
    try:
        until(lambda: learner.issued == 1)
        learner._announce.append(Finished(4))
        time.sleep(0.5)  # published and received into the generator's subscription
    finally:
        learner.close()
    backend.gates[1].set()
    th.join(15)
    assert not th.is_alive() and worker.finished == 4
    assert metrics.reconnects._value.get() == 0


def test_a_lease_past_the_generators_limits_is_not_generated():
    learner, backend = ScriptedLearner(leases=3), StubBackend()
    metrics = GeneratorMetrics()
    worker = GeneratorWorker(
        backend,
        "g0",
        learner.address,
        metrics,
        limits=LearnerLimits(max_group_size=1),  # the scripted leases ask for 2 samples
    )
    th = run_worker(worker)
    try:
        until(lambda: metrics.rejected.labels(reason="group_size")._value.get() >= 1)
        worker.stop.set()
        th.join(10)
    finally:
        learner.close()
    assert backend.calls == 0 and learner.pushed == []

"""Several leases per generation round (`generator.groups_per_batch`): requested together,
generated in one batch by a backend that can, pushed one group each, the next round's
requests out before this round is done, and every unstarted lease handed back on shutdown.
Against the scripted learner of test_worker.py (real sockets, real wire protocol)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from asyncrl.generators.backends.base import Capabilities, Sample
from tests.integration.worker_harness import (
    ScriptedLearner,
    StubBackend,
    make_worker,
    run_worker,
    serve_groups,
    until,
)


class BatchingBackend(StubBackend):
    """Declares batched groups; group i of a batch gets samples of i + 1 tokens, so groups
    differ in size. Records the group sizes of each batch call."""

    capabilities = Capabilities(batched_groups=True)

    def __init__(self, seconds: float = 0.0):
        super().__init__(seconds)
        self.batches: list[list[int]] = []

    def generate_groups(self, prompts, ns, params):
        self._call()
        self.batches.append(list(ns))
        out = []
        for i, n in enumerate(ns):
            tok = np.arange(i + 1, dtype=np.int32)
            out.append([Sample(tok, np.zeros(i + 1, np.float32), np.zeros(i + 1), "length")] * n)
        return out


def test_leases_are_taken_batched_and_pushed_one_group_each():
    learner, backend = ScriptedLearner(leases=6), BatchingBackend(seconds=0.05)
    # The first batch is held until the second round's last request is in: its requests go
    # out while the first batch generates, or never (and the gate's wait fails the call).
    backend.gates = {1: threading.Event()}
    learner.on_request = lambda n: backend.gates[1].set() if n == 6 else None
    serve_groups(make_worker(backend, learner, groups_per_batch=3), learner, 6)
    # Two rounds of three leases, each generated in one call; every group pushed alone.
    assert backend.batches == [[2, 2, 2], [2, 2, 2]] and learner.pushed == [1, 2, 3, 4, 5, 6]
    # The second round's three requests went out while the first was generating.
    assert all(t < backend.finished[0] for t in learner.requests[3:6])
    # The batch's 50 ms are shared by token count: groups of 2x1, 2x2 and 2x3 tokens get
    # 1/6, 2/6 and 3/6 of the batch's seconds.
    first = [g.generate_seconds for g in learner.groups[:3]]
    assert first[1] == pytest.approx(2 * first[0]) and first[2] == pytest.approx(3 * first[0])
    assert 0.05 <= sum(first) < 0.5


def test_a_partial_round_is_generated_with_what_was_granted():
    # 4 leases for rounds of 3: the second round gets one lease and two gate denials, and
    # generates that one alone (a lone group goes through `generate`).
    learner, backend = ScriptedLearner(leases=4), BatchingBackend()
    serve_groups(make_worker(backend, learner, groups_per_batch=3), learner, 4)
    assert backend.batches == [[2, 2, 2]] and learner.pushed == [1, 2, 3, 4]


def test_stop_hands_every_prefetched_lease_back():
    learner, backend = ScriptedLearner(leases=10), BatchingBackend()
    backend.gates[1] = threading.Event()
    worker = make_worker(backend, learner, groups_per_batch=3)
    th = run_worker(worker)
    try:
        until(lambda: learner.issued == 6)  # 1-3 generating, 4-6 prefetched
        worker.stop.set()
        backend.gates[1].set()
        th.join(10)
        assert not th.is_alive()
        until(lambda: sorted(learner.returned) == [4, 5, 6])
    finally:
        learner.close()
    assert learner.pushed == [1, 2, 3]  # the round in generation finished and pushed

"""A generator told to stop hands back every lease it holds before it exits, so the learner
re-issues them at once instead of after their deadline (elastic fleets: leaving is free).

The learner is `test_worker`'s scripted one (real sockets, real wire protocol); the case of a
lease in generation plus a prefetched one is `test_worker.test_stop_hands_the_prefetched_lease
_back`. Here: the stop comes while a lease request is still unanswered, and a real
`asyncrl generator` process gets SIGTERM.
"""

from __future__ import annotations

import time

from asyncrl.generators.metrics import GeneratorMetrics
from asyncrl.generators.worker import GeneratorWorker
from tests.integration.worker_harness import ScriptedLearner, StubBackend, run_worker, until


def test_a_lease_granted_after_the_stop_is_handed_back():
    learner, backend = ScriptedLearner(leases=5), StubBackend()
    worker = GeneratorWorker(
        backend, "g0", learner.address, GeneratorMetrics(), reconnect_seconds=5
    )

    def stop_then_grant(n: int) -> None:
        # The first request: the generator is stopped while it waits for the reply, and gives
        # up waiting (200 ms polls) before the learner grants lease 1.
        if n == 1:
            worker.stop.set()
            time.sleep(0.6)

    learner.on_request = stop_then_grant
    t = time.monotonic()
    th = run_worker(worker)
    try:
        th.join(10)
        assert not th.is_alive()
        until(lambda: learner.returned == [1])
    finally:
        learner.close()
    assert learner.issued == 1 and learner.pushed == []  # granted, never generated, returned
    assert backend.calls == 0
    # Stopping waited for the late grant, no longer than the shutdown grace (2 s) after it.
    assert time.monotonic() - t < 4

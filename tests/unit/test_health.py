"""The learner's progress watch behind /healthz (`learner/hub/health.py`): intake stalls only
count while generators are connected and the trainer is short of a batch; the step loop is
stuck only while a batch's worth of groups waits; progress on a counter resets its clock."""

from __future__ import annotations

from asyncrl.learner.hub.health import HealthWatch


def check(w: HealthWatch, now: float, **state):
    s = {"connected": 2, "accepted": 0, "consumed": 0, "waiting": 0, "batch": 4} | state
    return w.check(now, **s)


def test_intake_stall_needs_connected_generators_and_a_waiting_trainer():
    w = HealthWatch(stall_seconds=60)
    assert check(w, 0.0)[0]  # first look: the clocks start at 0
    assert check(w, 59.0)[0]  # 59 s without a group < 60
    ok, why = check(w, 60.0)
    assert not ok and why.startswith("intake stalled: no group accepted for 60s")
    assert "2 generators connected" in why and "0/4 groups waiting" in why
    # No generator connected: nothing is expected to arrive, so nothing is stalled.
    assert check(w, 61.0, connected=0)[0]
    # A full batch waits: intake need not move (the gate holds generators back).
    assert check(w, 62.0, waiting=4, consumed=4)[0]
    # One accepted group resets the intake clock.
    assert check(w, 63.0, accepted=1)[0]
    assert check(w, 122.0, accepted=1)[0]  # 59 s since the change at 63
    assert not check(w, 123.0, accepted=1)[0]  # 60 s


def test_step_loop_stuck_while_a_batch_waits():
    w = HealthWatch(stall_seconds=30)
    assert check(w, 0.0, waiting=4, accepted=4)[0]
    assert check(w, 29.0, waiting=4, accepted=4)[0]
    ok, why = check(w, 30.0, waiting=5, accepted=5)
    # Intake moved (accepted 4 -> 5) but no batch was taken for 30 s while 5 groups wait.
    assert not ok and why == "step loop stuck: no batch taken for 30s while 5 groups wait"
    # A batch taken (consumed 0 -> 4) resets it.
    assert check(w, 31.0, waiting=1, accepted=5, consumed=4)[0]
    assert check(w, 60.0, waiting=4, accepted=8, consumed=4)[0]  # 29 s since the take
    assert not check(w, 61.0, waiting=4, accepted=8, consumed=4)[0]


class _Engine:
    name, version, vocab_size = "stub", 3, 10

    def __init__(self, ok: bool):
        from asyncrl.generators.backends.base import Capabilities

        self.capabilities = Capabilities()
        self.ok = ok

    def health(self):
        return self.ok, "" if self.ok else "/health: connection refused"


def test_generator_health_needs_the_learner_and_the_engine():
    from asyncrl.generators.metrics import GeneratorMetrics
    from asyncrl.generators.worker import GeneratorWorker

    worker = GeneratorWorker(_Engine(False), "g0", "tcp://127.0.0.1:1", GeneratorMetrics())
    worker.session.last_error = "no reply within 10.0s"
    assert worker.healthy() == (
        False,
        "not connected to tcp://127.0.0.1:1: no reply within 10.0s",
    )
    worker.session.connected = True  # as after a welcome
    assert worker.healthy() == (False, "engine unreachable: /health: connection refused")
    worker.backend.ok = True
    assert worker.healthy() == (True, "ok version=3")

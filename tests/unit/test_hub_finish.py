"""The hub's side of a finished run and of honest health, on real loopback sockets: once the
run is finished the hub publishes `Finished` and answers hellos and lease requests with it
(heartbeats still get their Ack); `healthy()` turns 503 when generators are connected but no
group arrives for the stall period."""

from __future__ import annotations

import time

import zmq

from asyncrl.learner.hub.health import HealthWatch
from asyncrl.protocol.messages import Ack, Finished, Heartbeat, Hello, LeaseRequest, Welcome
from asyncrl.protocol.sockets import SocketFactory, recv
from tests.unit.test_hub import Generator, _hub


def test_a_finished_hub_says_so_on_every_channel():
    hub = _hub("2+2=")
    gen = Generator(hub)
    sub = SocketFactory(linger_ms=0).socket(zmq.SUB, server=False)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(hub.endpoints["weights"])
    try:
        assert isinstance(gen.ask(Hello("g0", "fake", -1)), Welcome)
        hub.loop.finish(7)
        assert gen.ask(Hello("g0", "fake", 0)) == Finished(7)
        assert gen.ask(LeaseRequest("g0", 0)) == Finished(7)
        assert isinstance(gen.ask(Heartbeat("g0", 0, [])), Ack)
        # Published repeatedly (every 0.25 s), so a subscriber that joined late gets it.
        assert sub.poll(3000), "no Finished published"
        assert recv(sub)[1] == Finished(7)
    finally:
        sub.close(0)
        gen.close()
        hub.stop()


def test_healthy_reports_an_intake_stall_while_generators_are_connected():
    hub = _hub("2+2=")
    gen = Generator(hub)
    try:
        ok, why = hub.healthy()
        assert ok and why.startswith("ok version=0 generators=0")
        hub._health_watch = HealthWatch(stall_seconds=0.3)  # instead of the 600 s default
        assert hub.healthy()[0]  # no generator yet: nothing is expected
        gen.ask(Hello("g0", "fake", 0))
        time.sleep(0.4)
        ok, why = hub.healthy()
        assert not ok and why.startswith("intake stalled: no group accepted for")
        assert "1 generators connected" in why
    finally:
        gen.close()
        hub.stop()

"""Property-based fuzzing of a live learner hub's control (ROUTER) and rollouts (PULL) sockets.

Hypothesis (strategies in `fuzz_messages.py`) starts from a valid instance of every message
type in `MESSAGE_TYPES` (built from each type's schema, so a new message type is fuzzed without
touching either file) and mutates it: a field's type and value (str/int/float/bool/None/list/
map/bytes, huge and negative numbers, deep nesting), list elements, missing and unknown fields,
the array descriptors (dtype, shape, name), the frames (missing, extra, truncated), and the
header itself (garbage, truncated, flipped bytes, another schema version or type). Each
message goes to either socket of a real `Hub` with the learner's receive limits, while a
legitimate generator keeps taking leases and returning groups and a trainer thread keeps
consuming them and advancing the version.

The property, checked after the storm: the hub thread is alive and healthy, nothing was
`internal` (a handler raising is a bug), every message sent was counted exactly once (malformed
by reason, a control message, or a rollout received), the policy version advanced during the
storm and a generator still gets a lease and a group accepted afterwards.
"""

from __future__ import annotations

import threading
import time

import pytest
import zmq
from hypothesis import HealthCheck, Phase, given, settings

from asyncrl.launch.config import load_config
from asyncrl.learner.data import PromptSource
from asyncrl.learner.hub import Hub
from asyncrl.learner.metrics import LearnerMetrics
from asyncrl.protocol.messages import (
    Hello,
    Lease,
    LeaseDenied,
    LeaseRequest,
    Welcome,
)
from asyncrl.protocol.sockets import SocketFactory, learner_receive_limits
from tests.integration.fuzz_messages import MUTATIONS, hostile_messages
from tests.unit.test_hub import CharTokenizer, Generator, _wait

CI_MESSAGES = 20_000
SLOW_MESSAGES = 200_000
LEGIT = "legitimate-generator-0"  # longer than any id the fuzzer draws: its leases stay its own
G, MAX_NEW = 2, 8


# ------------------------------------------------------------------ the live hub
def _hub() -> Hub:
    # B=1, η=4: five groups ahead of the learner; leases of 3 s and generators silent for
    # 2 x 1 s reclaimed, so leases the fuzzer happens to take free their capacity quickly.
    cfg = load_config(
        None,
        [
            "learner.bind_host=127.0.0.1",
            "learner.control_port=0",
            "learner.rollouts_port=0",
            "learner.weights_port=0",
            "train.groups_per_step=1",
            f"sampling.group_size={G}",
            f"sampling.max_new_tokens={MAX_NEW}",
            "buffer.max_staleness=4",
            "buffer.lease_seconds=3",
            "buffer.heartbeat_seconds=1",
            "reward.name=plugin",
            "reward.plugin=tests.unit.reward_plugins:moody",
            "reward.workers=1",
        ],
    )
    tok = CharTokenizer()
    rows = [{"prompt": "2+2=", "answer": "4"} for _ in range(4)]
    factory = SocketFactory(linger_ms=0, receive=learner_receive_limits(G, MAX_NEW))
    hub = Hub(cfg, PromptSource(rows, tok, "prompt"), tok, LearnerMetrics(), factory)
    hub.start()
    hub.publish(0, bytes(range(256)) * 40)  # so weight requests find a version to serve
    return hub


class Legit(threading.Thread):
    """A generator doing its job during the storm, and a trainer consuming its groups."""

    def __init__(self, hub: Hub):
        super().__init__(daemon=True)
        self.hub, self.stop = hub, threading.Event()
        self.sent = 0  # messages sent to the hub, for the accounting
        self.accepted_versions: list[int] = []

    def cycle(self, gen: Generator, deadline: float) -> bool:
        """Lease at the current version, return a group ["4", "5"] (rewards 1, 0), see it
        taken and advance the version. False if the gate said no before `deadline`."""
        while time.monotonic() < deadline:
            v = self.hub.core.version
            self.sent += 1
            lease = gen.ask(LeaseRequest(LEGIT, v), timeout_ms=10_000)
            if isinstance(lease, Lease):
                break
            if isinstance(lease, LeaseDenied) and lease.reason == "hello":
                self.hello(gen)  # as a real generator does: say hello again, carry on
            time.sleep(0.05)
        else:
            return False
        self.sent += 1
        gen.rollout(lease, ["4", "5"], version=lease.issued_version)
        taken = self.hub.wait_for_groups(1, self.stop)
        if taken:
            self.accepted_versions.append(v)
            self.hub.advance_version(v + 1)
        return bool(taken)

    def hello(self, gen: Generator) -> None:
        """Leases go only to a connection that said hello."""
        self.sent += 1
        assert isinstance(gen.ask(Hello(LEGIT, "fake", self.hub.core.version)), Welcome)

    def run(self) -> None:
        gen = Generator(self.hub, LEGIT)
        try:
            self.hello(gen)
            while not self.stop.is_set():
                self.cycle(gen, time.monotonic() + 5)
        finally:
            gen.close()


def _counted(m: LearnerMetrics) -> float:
    malformed = sum(s.value for s in m.malformed.collect()[0].samples if s.name.endswith("_total"))
    return malformed + m.control_received._value.get() + m.received._value.get()


def _storm(n: int) -> None:
    hub = _hub()
    legit = Legit(hub)
    ctx = zmq.Context()
    socks = {"control": ctx.socket(zmq.DEALER), "rollouts": ctx.socket(zmq.PUSH)}
    for name, s in socks.items():
        s.setsockopt(zmq.SNDTIMEO, 30_000)  # a hub that stopped reading fails the test
        s.setsockopt(zmq.LINGER, 0)
        s.connect(hub.endpoints[name])
    sent = {k: 0 for k in MUTATIONS}
    try:
        legit.start()

        @settings(
            # Each example fires 1-4 mutants at both sockets: about 5 messages.
            max_examples=n // 5,
            database=None,
            derandomize=True,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(hostile_messages())
        def fire(batch):
            for kind, frames in batch:
                for sock in socks.values():
                    sock.send_multipart(frames)
                    sent[kind] += 1
            while socks["control"].poll(0):  # replies are not the point; keep the queue short
                socks["control"].recv_multipart()

        t0 = time.monotonic()
        fire()
        storm_seconds = time.monotonic() - t0
        total = sum(sent.values())
        assert total >= 0.8 * n, sent  # the budget was fired
        legit.stop.set()
        legit.join(timeout=30)
        assert not legit.is_alive()
        expected = total + legit.sent
        deadline = time.monotonic() + 60
        while _counted(hub.metrics) < expected and time.monotonic() < deadline:
            time.sleep(0.1)
        m = hub.metrics
        by_reason = {
            s.labels["reason"]: s.value
            for s in m.malformed.collect()[0].samples
            if s.name.endswith("_total")
        }
        assert by_reason.get("internal", 0) == 0, by_reason
        # Every message counted exactly once.
        assert _counted(m) == expected, (by_reason, sent, legit.sent)
        assert hub.loop.alive() and hub.healthy()[0], hub.healthy()
        # The version advanced during the storm: the legitimate generator's groups were
        # accepted and trained on while the fuzzer fired.
        assert len(legit.accepted_versions) >= 3, (legit.accepted_versions, storm_seconds)
        # ...and still is after it.
        after = Legit(hub)
        gen = Generator(hub, LEGIT)
        try:
            after.hello(gen)
            v = hub.core.version
            assert after.cycle(gen, time.monotonic() + 20)
            assert hub.core.version == v + 1
        finally:
            gen.close()
        print(f"fuzz: {total} messages in {storm_seconds:.1f} s; malformed {by_reason}")
    finally:
        legit.stop.set()
        for s in socks.values():
            s.close(0)
        ctx.term()
        hub.stop()


def test_fuzzed_messages_never_stop_the_hub_and_are_all_counted():
    _storm(CI_MESSAGES)


@pytest.mark.slow
def test_fuzzed_messages_long():
    _storm(SLOW_MESSAGES)


def test_oversize_frames_and_too_many_frames_are_counted_and_the_peer_comes_back():
    hub = _hub()
    m = hub.metrics
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(hub.endpoints["rollouts"])
    try:
        # The rollouts socket's frame limit: max(64 KiB header, G*MAX_NEW*4 = 64 B) + 1 MiB.
        limit = learner_receive_limits(G, MAX_NEW)["rollouts"].decode.max_frame_bytes
        assert limit == 64 * 1024 + 2**20
        # 20 frames > 16: drained and counted, never decoded.
        push.send_multipart([b"x"] * 20)
        _wait(lambda: m.malformed.labels(reason="frames")._value.get() == 1)
        # One byte over the limit: ZeroMQ drops the connection (nothing reaches the hub's
        # code); the socket monitor counts it.
        push.send_multipart([b"\0" * (limit + 1)])
        _wait(lambda: m.peer_disconnects.labels(reason="disconnected")._value.get() >= 1)
        # The peer reconnects by itself and is heard again; the hub never stopped.
        before = m.malformed.labels(reason="header")._value.get()
        push.send_multipart([b"\xc1"])
        _wait(lambda: m.malformed.labels(reason="header")._value.get() == before + 1)
        assert hub.loop.alive() and hub.healthy()[0]
        assert m.malformed.labels(reason="internal")._value.get() == 0
    finally:
        push.close(0)
        ctx.term()
        hub.stop()

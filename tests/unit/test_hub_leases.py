"""The attacks of issue 16 items 3 and 7 against a real `Hub` on loopback: a second peer
completing, returning or extending a victim's lease, forged lease ids, a weight-chunk flood
without `Hello`, bytes served that were never sent. Each now ends with its precise refusal while
the victim's own work goes through."""

from __future__ import annotations

import threading
import time

import numpy as np
import zmq

from asyncrl.learner.weights import MAX_OUTSTANDING_PER_PEER, send_now
from asyncrl.protocol.codec import decode
from asyncrl.protocol.messages import (
    Ack,
    Heartbeat,
    Hello,
    Lease,
    LeaseDenied,
    LeaseRequest,
    LeaseReturn,
    NcclGroup,
    NcclJoin,
    WeightsChunk,
    WeightsRequest,
    Welcome,
)
from asyncrl.protocol.sockets import SocketFactory, create_curve_keys, load_curve_keys, send
from tests.unit.test_hub import Generator, _dropped, _hub, _wait


def _refused(hub, message: str, reason: str) -> float:
    return hub.metrics.lease_messages_refused.labels(message=message, reason=reason)._value.get()


def _weights_refused(hub, reason: str) -> float:
    return hub.metrics.weight_requests_refused.labels(reason=reason)._value.get()


def _taken(hub) -> list[str]:
    return [g.lease_id for g in hub.wait_for_groups(1, threading.Event())]


def test_a_second_peer_cannot_complete_return_or_extend_a_victims_lease():
    hub = _hub("2+2=")
    victim, thief, stranger = Generator(hub, "g0"), Generator(hub, "g0"), Generator(hub, "evil")
    try:
        assert isinstance(victim.ask(Hello("g0", "fake", 0)), Welcome)
        lease = victim.ask(LeaseRequest("g0", 0))
        assert isinstance(lease, Lease)
        # 128 random bits, as 32 hex characters.
        assert len(lease.lease_id) == 32 and int(lease.lease_id, 16) >= 0
        deadline = hub.core.ledger.leases.open[lease.lease_id].deadline
        # A connection that never said hello gets no lease: leases are bound to a session.
        assert stranger.ask(LeaseRequest("evil", 0)) == LeaseDenied("hello", 0.5, 0)
        assert _refused(hub, "lease_request", "no_hello") == 1
        # The thief says hello under the victim's generator id on its own connection: it gets
        # a session of its own, not the victim's leases.
        mine = thief.ask(Hello("g0", "fake", 0))
        assert isinstance(mine, Welcome) and mine.session
        assert thief.ask(LeaseReturn("g0", [lease.lease_id])) == Ack(0)
        assert _refused(hub, "lease_return", "wrong_holder") == 1
        # Extending over its own connection, or naming its own session: refused either way.
        assert thief.ask(Heartbeat("g0", 0, [lease.lease_id])) == Ack(0)
        assert thief.ask(Heartbeat("g0", 0, [lease.lease_id], mine.session)) == Ack(0)
        assert _refused(hub, "heartbeat", "wrong_holder") == 2
        led = hub.core.ledger
        assert led.leases.open[lease.lease_id].deadline == deadline and led.in_flight == 1
        # A group under the victim's id from another generator: wrong_holder; under a forged
        # random id: unknown_lease (no longer `duplicate`).
        stranger.rollout(lease, ["4", "5"])
        _wait(lambda: _dropped(hub, "wrong_holder") == 1)
        forged = Lease("0123456789abcdef" * 2, lease.prompt_ids, 2, lease.sampling, 0.0, 0)
        thief.rollout(forged, ["4", "5"])
        _wait(lambda: _dropped(hub, "unknown_lease") == 1)
        assert led.holder(lease.lease_id).generator_id == "g0" and led.in_flight == 1
        # The victim's own group is accepted; its copy is a duplicate (an id we issued).
        victim.rollout(lease, ["4", "5"])
        assert _taken(hub) == [lease.lease_id]
        victim.rollout(lease, ["4", "5"])
        _wait(lambda: _dropped(hub, "duplicate") == 1)
        assert _dropped(hub, "invalid") == 0
    finally:
        for g in (victim, thief, stranger):
            g.close()
        hub.stop()


def test_heartbeats_from_another_socket_name_the_session_and_a_reconnect_keeps_leases():
    hub = _hub("2+2=")
    first, beats, second = Generator(hub), Generator(hub), Generator(hub)
    try:
        token = first.ask(Hello("g0", "fake", 0)).session
        lease = first.ask(LeaseRequest("g0", 0))
        open_ = hub.core.ledger.leases.open
        before, index = open_[lease.lease_id].deadline, open_[lease.lease_id].prompt_index
        # The generator's heartbeat thread has its own socket and presents the token.
        time.sleep(0.05)
        assert beats.ask(Heartbeat("g0", 0, [lease.lease_id], token)) == Ack(0)
        assert open_[lease.lease_id].deadline > before
        # The generator reconnects (a new routing identity) and proves its session: the
        # lease follows it; the old connection's session ended, it can no longer hand it back.
        assert second.ask(Hello("g0", "fake", 0, token)).session == token
        assert first.ask(LeaseReturn("g0", [lease.lease_id])) == Ack(0)
        assert _refused(hub, "lease_return", "no_hello") == 1
        assert hub.core.ledger.in_flight == 1
        assert second.ask(LeaseReturn("g0", [lease.lease_id])) == Ack(0)
        assert hub.core.ledger.in_flight == 0 and list(hub.core.ledger.reissue) == [index]
        # A token presented under another generator id opens a fresh session instead.
        assert first.ask(Hello("g1", "fake", 0, token)).session != token
    finally:
        for g in (first, beats, second):
            g.close()
        hub.stop()


def test_under_curve_a_group_completes_only_with_the_holders_key(tmp_path):
    create_curve_keys(str(tmp_path), ["a", "b"])
    server = SocketFactory(curve=load_curve_keys(str(tmp_path), "server"))
    hub = _hub("2+2=", factory=server)
    clients = [
        SocketFactory(curve=load_curve_keys(str(tmp_path), "client", name), linger_ms=0)
        for name in ("a", "b", "a")
    ]
    victim, thief, victim_again = (Generator(hub, "g0", factory=f) for f in clients)
    try:
        token = victim.ask(Hello("g0", "fake", 0)).session
        lease = victim.ask(LeaseRequest("g0", 0))
        holder = hub.core.ledger.holder(lease.lease_id)
        assert len(holder.key) == 40  # the Z85 form of a 32-byte public key, from ZAP
        # Key b knows the id and claims the generator id, and even the session token: its
        # group is wrong_holder, its hello opens a session of its own.
        thief.rollout(lease, ["4", "5"])
        _wait(lambda: _dropped(hub, "wrong_holder") == 1)
        assert thief.ask(Hello("g0", "fake", 0, token)).session != token
        assert hub.core.ledger.holder(lease.lease_id) == holder
        # Key a, reconnected with its token, keeps the lease and completes it.
        assert victim_again.ask(Hello("g0", "fake", 0, token)).session == token
        victim_again.rollout(lease, ["4", "5"])
        assert _taken(hub) == [lease.lease_id]
    finally:
        for g in (victim, thief, victim_again):
            g.close()
        hub.stop()
        server.close()


def test_nccl_groups_only_for_connections_that_said_hello():
    hub = _hub("2+2=")
    gen = Generator(hub)
    try:
        assert gen.ask(NcclJoin("g0", 2)) == NcclGroup("", 0, "", "", error="say hello first")
        assert _weights_refused(hub, "no_hello") == 1
        gen.ask(Hello("g0", "fake", 0))
        # Past the hello check: this run offers no nccl transport.
        assert gen.ask(NcclJoin("g0", 2)).error == "learner.weights.type is not nccl"
        assert _weights_refused(hub, "no_hello") == 1
    finally:
        gen.close()
        hub.stop()


def _publish(hub, nbytes: int) -> bytes:
    blob = bytes(np.arange(nbytes, dtype=np.uint8) * 7 % 251)
    hub.publish(1, blob)
    return blob


def test_a_chunk_flood_without_hello_is_refused_and_intake_goes_on():
    hub = _hub("2+2=", overrides=["learner.weight_chunk_bytes=4096"])
    flooder, gen = Generator(hub, "flood"), Generator(hub, "g0")
    try:
        blob = _publish(hub, 16 * 4096)  # 16 chunks
        n = 2000
        for i in range(n):
            send(flooder.control, WeightsRequest(1, i % 16))
        # Meanwhile a generator that said hello fetches the version and trains.
        welcome = gen.ask(Hello("g0", "fake", 0))
        assert welcome.weights_chunks == 16
        got = b"".join(bytes(gen.ask(WeightsRequest(1, i)).data) for i in range(16))
        assert got == blob
        lease = gen.ask(LeaseRequest("g0", 0))
        gen.rollout(lease, ["4", "5"])
        assert _taken(hub) == [lease.lease_id]
        # Every flood request refused and counted, none answered; bytes served are exactly
        # the 16 chunks the generator read.
        _wait(lambda: _weights_refused(hub, "no_hello") == n)
        assert not flooder.control.poll(200)
        assert hub.metrics.weight_bytes_served._value.get() == len(blob)
    finally:
        flooder.close()
        gen.close()
        hub.stop()


def test_a_peer_that_does_not_read_is_capped_and_bytes_served_are_bytes_sent():
    chunk = 1 << 20
    hub = _hub("2+2=", overrides=[f"learner.weight_chunk_bytes={chunk}"])
    greedy = Generator(hub, "g0")
    try:
        _publish(hub, 4 * chunk)
        greedy.ask(Hello("g0", "fake", 0))
        n = 300  # 300 MiB asked for, never read while asking: more than loopback buffers
        for i in range(n):
            send(greedy.control, WeightsRequest(1, i % 4))
        _wait(lambda: _handled(hub, n))
        served = hub.metrics.weight_bytes_served._value.get()
        received = 0
        while greedy.control.poll(1000):
            msg = decode(greedy.control.recv_multipart())
            assert isinstance(msg, WeightsChunk) and not msg.missing
            received += len(msg.data)
        # What was counted is what arrived, chunk for chunk; the rest was refused.
        assert received == served
        refused = _weights_refused(hub, "peer_cap") + _weights_refused(hub, "not_sent")
        assert received // chunk + refused == n
        assert refused >= n - 4 * MAX_OUTSTANDING_PER_PEER
    finally:
        greedy.close()
        hub.stop()


def _handled(hub, n: int) -> bool:
    """Every request of the greedy peer handled: served (1 MiB each) or refused."""
    m = hub.metrics
    served = m.weight_bytes_served._value.get() // (1 << 20)
    refused = sum(_weights_refused(hub, r) for r in ("peer_cap", "not_sent"))
    return served + refused == n


def test_send_now_reports_what_zeromq_did_not_queue():
    ctx = zmq.Context.instance()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        router.setsockopt(zmq.SNDHWM, 1)
        dealer.setsockopt(zmq.RCVHWM, 1)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer.connect(f"tcp://127.0.0.1:{port}")
        dealer.send(b"hi")
        assert router.poll(5000)
        ident = router.recv_multipart()[0]
        data = np.zeros(1 << 20, np.uint8)
        # A peer that left (or never was): not queued, and the socket does not raise.
        assert send_now(router, WeightsChunk(1, 0, data), [b"nobody"]) is None
        # A peer that does not read: its queue fills, then sends are refused, not dropped
        # silently (1 MiB each; loopback buffers hold far less than 1000 of them).
        results = [send_now(router, WeightsChunk(1, 0, data), [ident]) for _ in range(1000)]
        assert results[0] is not None and results[-1] is None
        # Mandatory only around those sends: to an unknown peer a plain send drops silently.
        router.send_multipart([b"nobody", b"x"])
    finally:
        router.close(0)
        dealer.close(0)

"""A generator's control session drops a reply that does not decode, counts it, and keeps
waiting for the next one (a learner of another build, a corrupted frame) instead of dying
with a traceback."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import zmq

from asyncrl.generators.session import Session
from asyncrl.protocol.messages import LeaseDenied
from asyncrl.protocol.sockets import SocketFactory, send


def test_a_malformed_control_reply_is_dropped_counted_and_the_next_one_returned():
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    rejected: list[tuple[str, str]] = []
    sess = Session(
        SimpleNamespace(name="fake", version=0),
        "g0",
        f"tcp://127.0.0.1:{port}",
        SocketFactory(linger_ms=0),
        5.0,
        threading.Event(),
        reject=lambda reason, detail: rejected.append((reason, detail)),
    )
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    sess.control = dealer
    try:
        dealer.send(b"hello?")  # the router learns the dealer's routing id
        ident, _ = router.recv_multipart()
        router.send_multipart([ident, b"\xc1 not msgpack", b"junk"])  # 0xc1: never valid
        send(router, LeaseDenied(reason="gate", retry_after=1.0, learner_version=3), [ident])
        reply = sess.reply()
        # The garbage was dropped with one counted reason; the valid reply came through.
        assert isinstance(reply, LeaseDenied) and reply.reason == "gate"
        assert [r for r, _ in rejected] == ["malformed"]
        assert "control reply" in rejected[0][1]
    finally:
        dealer.close(0)
        router.close(0)

"""Releases that mix: a generator speaking the previous wire schema is refused at hello with
reason `schema` and a message naming both versions, counted; `Refused` is read whatever schema
its header names; a generator of this release exits on it instead of reconnecting."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import msgpack
import pytest
import zmq

from asyncrl.generators import session as session_mod
from asyncrl.generators.session import LearnerRefused, Session
from asyncrl.protocol.codec import ProtocolError, SchemaMismatch, decode, encode
from asyncrl.protocol.messages import RELEASE, SCHEMA_VERSION, Hello, Refused, Welcome
from asyncrl.protocol.sockets import SocketFactory, recv
from tests.unit.test_hub import Generator
from tests.unit.test_tuning import _hub, _metric

PREVIOUS = SCHEMA_VERSION - 1


def _previous_hello(gid: str) -> list[bytes]:
    """A Hello as the previous schema wrote it: no schema or release field."""
    fields = {"generator_id": gid, "backend": "hf", "version": 0, "session": ""}
    return [msgpack.packb({"v": PREVIOUS, "t": "hello", "f": fields, "a": []})]


def test_a_generator_of_the_previous_schema_is_refused_with_both_versions():
    hub = _hub()
    old = Generator(hub, "old")
    try:
        old.control.send_multipart(_previous_hello("old"))
        assert old.control.poll(5000)
        frames = old.control.recv_multipart()
        reply = decode(frames)
        assert isinstance(reply, Refused) and reply.reason == "schema"
        assert f"wire schema {PREVIOUS} (asyncrl unknown)" in reply.detail
        assert f"schema {SCHEMA_VERSION} (asyncrl {RELEASE})" in reply.detail
        assert (reply.schema, reply.release) == (SCHEMA_VERSION, RELEASE)
        assert _metric(hub, "asyncrl_hellos_refused_total", reason="schema") == 1
        # Still one message of another schema in the message accounting.
        assert _metric(hub, "asyncrl_malformed_messages_total", reason="schema_version") == 1
        # No session was opened: the same connection gets no lease.
        assert len(hub.peers) == 0
    finally:
        old.close()
        hub.stop()


def test_refused_is_read_whatever_schema_its_header_names():
    frames = encode(Refused("schema", "why", 99, "9.9"))
    header = msgpack.unpackb(frames[0])
    header["v"] = 99
    assert decode([msgpack.packb(header)]) == Refused("schema", "why", 99, "9.9")
    # Any other type of another schema is refused, saying which schema and type it was.
    hello = msgpack.unpackb(encode(Hello("g", "hf", 0))[0])
    hello["v"] = 99
    with pytest.raises(SchemaMismatch) as exc:
        decode([msgpack.packb(hello)])
    assert (exc.value.schema, exc.value.msg_type, exc.value.release) == (99, "hello", RELEASE)
    assert isinstance(exc.value, ProtocolError) and exc.value.reason == "schema_version"


def test_a_generator_of_this_release_exits_on_a_schema_refusal(monkeypatch):
    hub = _hub()
    # This generator claims the previous schema in its hello (its header is current).
    real = session_mod.Hello
    monkeypatch.setattr(
        session_mod, "Hello", lambda *a, **k: real(*a, **k, schema=PREVIOUS, release="0.0.9")
    )
    backend = SimpleNamespace(name="fake", version=0)
    factory = SocketFactory(linger_ms=0)
    sess = Session(backend, "g0", hub.endpoints["control"], factory, 5.0, threading.Event())
    try:
        with pytest.raises(LearnerRefused, match=f"wire schema {PREVIOUS} .asyncrl 0.0.9."):
            sess.connect()
        assert _metric(hub, "asyncrl_hellos_refused_total", reason="schema") == 1
    finally:
        sess.close()
        hub.stop()


def test_a_current_hello_is_welcome():
    hub = _hub()
    gen = Generator(hub, "g0")
    try:
        assert isinstance(gen.ask(Hello("g0", "fake", 0)), Welcome)
        assert _metric(hub, "asyncrl_hellos_refused_total", reason="schema") == 0
    finally:
        gen.close()
        hub.stop()


def test_recv_names_the_schema_of_a_routed_message():
    ctx = zmq.Context.instance()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind("inproc://schema-test")
    b.connect("inproc://schema-test")
    try:
        b.send_multipart(_previous_hello("x"))
        with pytest.raises(SchemaMismatch) as exc:
            recv(a)
        assert exc.value.schema == PREVIOUS and exc.value.release == "unknown"
    finally:
        a.close(0)
        b.close(0)

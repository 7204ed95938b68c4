"""The hub's sessions: who said hello on which connection, with which key; tokens that move a
session to a new connection only for the same generator and key; a bounded table."""

from __future__ import annotations

from asyncrl.buffer.leases import Holder
from asyncrl.learner.hub.peers import Peers, Sender


def test_hello_opens_a_session_bound_to_connection_and_key():
    peers = Peers()
    a = Sender(b"conn-a", "KEY-A")
    peer, moved = peers.hello(a, "g0", "")
    assert moved is None and peer.holder == Holder("g0", b"conn-a", "KEY-A")
    assert len(peer.token) == 32
    # Same connection, same generator: the same session (a re-sync hello keeps its token).
    assert peers.hello(a, "g0", "")[0].token == peer.token
    # The connection with another key is not this session (ZAP names the key per message).
    assert peers.get(a) is peer and peers.get(Sender(b"conn-a", "KEY-B")) is None
    assert peers.get(Sender(b"conn-x")) is None
    # A token names the session only with the session's generator id and key.
    assert peers.by_token(peer.token, "g0", "KEY-A") is peer
    assert peers.by_token(peer.token, "g1", "KEY-A") is None
    assert peers.by_token(peer.token, "g0", "KEY-B") is None
    assert peers.by_token("", "g0", "KEY-A") is None


def test_a_token_moves_the_session_only_for_the_same_generator_and_key():
    peers = Peers()
    old, _ = peers.hello(Sender(b"c1", "K"), "g0", "")
    # Another key presenting the token: a fresh session, the old one untouched.
    other, moved = peers.hello(Sender(b"c2", "K2"), "g0", old.token)
    assert moved is None and other.token != old.token and peers.get(Sender(b"c1", "K")) is old
    # Another generator id presenting it: likewise.
    assert peers.hello(Sender(b"c3", "K"), "g1", old.token)[1] is None
    # The same generator and key on a new connection: the session moves, the old connection
    # is forgotten (it must say hello again).
    new, moved = peers.hello(Sender(b"c4", "K"), "g0", old.token)
    assert moved == Holder("g0", b"c1", "K") and new.token == old.token
    assert new.holder == Holder("g0", b"c4", "K")
    assert peers.get(Sender(b"c1", "K")) is None and not peers.admitted(b"c1")


def test_the_table_is_bounded_and_silent_generators_are_forgotten():
    peers = Peers(limit=2)
    peers.hello(Sender(b"c1"), "g1", "")
    peers.hello(Sender(b"c2"), "g2", "")
    peers.get(Sender(b"c1"))  # c1 seen last: c2 is now the least recently seen
    peers.hello(Sender(b"c3"), "g3", "")
    # Three sessions in a table of 2: the least recently seen (c2) is evicted.
    assert [peers.admitted(c) for c in (b"c1", b"c2", b"c3")] == [True, False, True]
    peers.forget_generator("g1")
    assert len(peers) == 1 and not peers.admitted(b"c1")

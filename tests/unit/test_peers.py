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
    evicted = []
    peers = Peers(limit=2, on_evict=lambda *e: evicted.append(e))
    peers.hello(Sender(b"c1"), "g1", "")
    peers.hello(Sender(b"c2"), "g2", "")
    peers.get(Sender(b"c1"))  # c1 seen last: c2 is now the least recently seen
    peers.hello(Sender(b"c3"), "g3", "")
    # Three sessions in a table of 2: the least recently seen (c2) is evicted.
    assert [peers.admitted(c) for c in (b"c1", b"c2", b"c3")] == [True, False, True]
    assert evicted == [("g2", "", "limit")]
    peers.forget_generator("g1")  # gone silent: forgotten, not evicted
    assert len(peers) == 1 and not peers.admitted(b"c1") and len(evicted) == 1


def test_one_address_flooding_hellos_pushes_out_only_its_own_sessions():
    evicted = []
    peers = Peers(limit=5, per_source=2, on_evict=lambda *e: evicted.append(e))
    # Two honest generators on two hosts.
    peers.hello(Sender(b"a", address="10.0.0.1"), "honest-a", "")
    peers.hello(Sender(b"b", address="10.0.0.2"), "honest-b", "")
    # One host opens connection after connection, each with a made-up generator id: past its
    # 2 sessions, its own least recently seen goes, never another host's.
    for k in range(6):
        peers.hello(Sender(f"x{k}".encode(), address="10.0.0.9"), f"fake-{k}", "")
    assert peers.admitted(b"a") and peers.admitted(b"b")
    assert [peers.admitted(f"x{k}".encode()) for k in range(6)] == [False] * 4 + [True] * 2
    # 6 hellos, room for 2: fake-0..fake-3 evicted, each counted with its address and bound.
    assert evicted == [(f"fake-{k}", "10.0.0.9", "source_limit") for k in range(4)]
    # A connection whose address ZeroMQ does not give (inproc) is bound by the total only.
    for k in range(3):
        peers.hello(Sender(f"i{k}".encode()), f"inproc-{k}", "")
    assert len(peers) == 5 and evicted[-1][2] == "limit"

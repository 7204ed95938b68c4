"""The connections that said `Hello`: who may lease, return, extend and fetch weights.

A connection is the control socket's ZeroMQ routing identity (plus, under CURVE, the public key
ZAP authenticated it with). Its `Hello` opens a session: a secret token sent back in the
`Welcome`. The leases a connection receives are bound to it (`buffer.leases.Holder`); the
generator's heartbeat thread, which has a socket of its own, names the session by its token.
A generator that reconnects (a new routing identity) presents its previous token in its new
`Hello`: when the generator id and the key match too, the session and its leases move to the new
connection. Without CURVE a token is as secret as the plaintext TCP stream it travelled on.

Used on the hub's socket thread only. Bounded twice: past `per_source` sessions from one IP
address, that address's least recently seen session is forgotten, so one host opening
connection after connection (a flood, or a crash loop) pushes out only its own; past `limit`
sessions in all, the least recently seen anywhere is. A forgotten session's leases expire and
are re-issued.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from asyncrl.buffer.leases import Holder

MAX_PEERS = 4096
# Sessions one IP address may hold: a host with a generator per GPU and its reconnects stays
# far below it.
MAX_PEERS_PER_SOURCE = 64


@dataclass(frozen=True)
class Sender:
    """Where a control message came from: routing identity, CURVE key ("" without) and IP
    address ("" when unknown)."""

    connection: bytes
    key: str = ""
    address: str = ""


@dataclass
class Peer:
    holder: Holder
    token: str
    address: str = ""  # the IP address it said hello from ("" when unknown)

    @property
    def generator_id(self) -> str:
        return self.holder.generator_id


class Peers:
    def __init__(
        self,
        limit: int = MAX_PEERS,
        per_source: int = MAX_PEERS_PER_SOURCE,
        on_evict: Callable[[str, str, str], None] | None = None,
    ):
        """`on_evict(generator_id, address, bound)` hears of each session forgotten to make
        room, `bound` being "source_limit" or "limit"."""
        self.limit = limit
        self.per_source = per_source
        self.on_evict = on_evict
        self._by_conn: OrderedDict[bytes, Peer] = OrderedDict()
        self._by_token: dict[str, Peer] = {}

    def __len__(self) -> int:
        return len(self._by_conn)

    def hello(self, sender: Sender, generator_id: str, token: str) -> tuple[Peer, Holder | None]:
        """Open (or resume) the session of `sender`. Returns the peer and, when a previous
        connection's session moved here, that connection's holder (its leases follow)."""
        holder = Holder(generator_id, sender.connection, sender.key)
        current = self._by_conn.get(sender.connection)
        if current is not None and current.holder == holder:
            self._by_conn.move_to_end(sender.connection)
            return current, None  # the same connection saying hello again (re-sync)
        moved_from = None
        resumed = self._by_token.get(token) if token else None
        if resumed is not None and resumed.holder.generator_id == generator_id:
            if resumed.holder.key == sender.key:
                moved_from = resumed.holder
                self._drop(resumed)
        if current is not None:
            self._drop(current)
        token = token if moved_from is not None else secrets.token_hex(16)
        peer = Peer(holder, token, sender.address)
        self._by_conn[sender.connection] = peer
        self._by_token[peer.token] = peer
        if sender.address:
            same = [p for p in self._by_conn.values() if p.address == sender.address]
            for old in same[: max(0, len(same) - self.per_source)]:  # least recently seen first
                self._evict(old, "source_limit")
        while len(self._by_conn) > self.limit:
            self._evict(next(iter(self._by_conn.values())), "limit")
        return peer, moved_from

    def _evict(self, peer: Peer, bound: str) -> None:
        self._drop(peer)
        if self.on_evict is not None:
            self.on_evict(peer.generator_id, peer.address, bound)

    def get(self, sender: Sender) -> Peer | None:
        """The session of the connection `sender`, if it said hello (with the same key)."""
        peer = self._by_conn.get(sender.connection)
        if peer is None or peer.holder.key != sender.key:
            return None
        self._by_conn.move_to_end(sender.connection)
        return peer

    def by_token(self, token: str, generator_id: str, key: str) -> Peer | None:
        """The session a heartbeat names, if its generator id and key are the session's."""
        peer = self._by_token.get(token) if token else None
        if peer is None or (peer.generator_id, peer.holder.key) != (generator_id, key):
            return None
        self._by_conn.move_to_end(peer.holder.connection)
        return peer

    def admitted(self, connection: bytes) -> bool:
        """Whether the connection said hello (weight serving asks; the key was checked by
        ZAP already when CURVE is on)."""
        return connection in self._by_conn

    def forget_generator(self, generator_id: str) -> None:
        """A generator went silent: its sessions end (it says hello again when it is back)."""
        for peer in [p for p in self._by_conn.values() if p.generator_id == generator_id]:
            self._drop(peer)

    def _drop(self, peer: Peer) -> None:
        self._by_conn.pop(peer.holder.connection, None)
        self._by_token.pop(peer.token, None)

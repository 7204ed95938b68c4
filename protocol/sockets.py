"""ZeroMQ socket construction with the options every asyncrl socket needs.

Why these options: ZMQ_IMMEDIATE so nothing queues towards a peer that is not connected yet,
a finite ZMQ_LINGER so shutdown never hangs, ZMQ_MAXMSGSIZE on receivers so one frame cannot
exhaust memory, and optional CurveZMQ so only authorised generators take part.

A receiving socket can be given `ReceiveLimits`: ZMQ_MAXMSGSIZE then follows the largest frame
its messages can legitimately hold (ZeroMQ disconnects a peer that sends a larger one) and
ZMQ_RCVHWM bounds how many messages are queued per peer, so what one peer can make the
receiver hold is about `hwm` messages of at most `max_frames` such frames.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import zmq

from asyncrl.protocol.codec import DEFAULT_LIMITS, DecodeLimits, ProtocolError, decode, encode
from asyncrl.protocol.messages import Message
from asyncrl.protocol.settings import SecurityConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CurveKeys:
    """Curve key material. Server side: own key pair plus the directory of allowed client
    public keys. Client side: own key pair plus the server's public key."""

    public: bytes
    secret: bytes
    server_public: bytes | None = None
    allowed_clients_dir: str | None = None
    operators_dir: str | None = None  # server: operator public keys (`asyncrl ctl`), if any


def create_curve_keys(key_dir: str, clients: list[str], operators: list[str] | None = None) -> None:
    """Write a server key pair (unless one exists: keys already handed out stay valid), one
    key pair per client name and one per operator name. The server lets every public key in
    `key_dir/clients/` and `key_dir/operators/` connect; only operator keys may tune a live
    run, only client keys may generate."""
    from zmq.auth import create_certificates

    d = Path(key_dir)
    (d / "clients").mkdir(parents=True, exist_ok=True)
    if not (d / "server.key_secret").exists():
        create_certificates(d, "server")
    for sub, names in (("clients", clients), ("operators", operators or [])):
        (d / sub).mkdir(exist_ok=True)
        for name in names:
            create_certificates(d, name)
            (d / sub / f"{name}.key").write_bytes((d / f"{name}.key").read_bytes())
    for secret in d.glob("*.key_secret"):
        secret.chmod(0o600)


def operator_keys(key_dir: str | None) -> frozenset[str]:
    """The operators' public keys (Z85, as ZAP reports a peer's key) in `key_dir/operators/`."""
    if not key_dir or not (Path(key_dir) / "operators").is_dir():
        return frozenset()
    from zmq.auth import load_certificates

    return frozenset(k.decode() for k in load_certificates(Path(key_dir) / "operators"))


def load_curve_keys(key_dir: str, role: str, client_name: str = "client") -> CurveKeys:
    """Load keys written by `asyncrl keys`: role `server` (learner) or `client` (generator)."""
    from zmq.auth import load_certificate

    d = Path(key_dir)
    if role == "server":
        public, secret = load_certificate(d / "server.key_secret")
        ops = d / "operators"
        return CurveKeys(
            public,
            secret,
            allowed_clients_dir=str(d / "clients"),
            operators_dir=str(ops) if ops.is_dir() else None,
        )
    public, secret = load_certificate(d / f"{client_name}.key_secret")
    server_public, _ = load_certificate(d / "server.key")
    return CurveKeys(public, secret, server_public=server_public)


@dataclass(frozen=True)
class ReceiveLimits:
    """What one receiving socket takes from each peer: `decode` limits (whose largest frame
    also sets ZMQ_MAXMSGSIZE) and `hwm`, the messages ZeroMQ queues per peer (ZMQ_RCVHWM)
    before it stops reading from that peer's connection."""

    decode: DecodeLimits = DEFAULT_LIMITS
    hwm: int = 1000


# Generators' control messages carry no arrays and small headers; a handful per generator is
# ever outstanding (a request, heartbeats, pipelined chunk requests).
CONTROL_LIMITS = ReceiveLimits(DecodeLimits(max_array_bytes=64 * 1024), hwm=64)


def rollout_limits(group_size: int, max_new_tokens: int) -> ReceiveLimits:
    """Limits for a socket receiving `RolloutGroup`s of `group_size` samples of at most
    `max_new_tokens` tokens: its largest array is the flattened tokens (or logprobs, or
    versions) of a full group, 4 bytes per token."""
    largest = max(group_size, 1) * max(max_new_tokens, 1) * 4
    return ReceiveLimits(DecodeLimits(max_array_bytes=largest), hwm=4)


def learner_receive_limits(group_size: int, max_new_tokens: int) -> dict[str, ReceiveLimits]:
    """The learner hub's receiving sockets by name (`control`, `rollouts`)."""
    return {"control": CONTROL_LIMITS, "rollouts": rollout_limits(group_size, max_new_tokens)}


def setup_socket_factory(
    security: SecurityConfig,
    role: str,
    receive: Mapping[str, ReceiveLimits] | None = None,
    on_auth_denied: Callable[[str], None] | None = None,
) -> SocketFactory:
    """The factory for a role from `SecurityConfig` (plain sockets when no key dir is set);
    `receive`: limits of its receiving sockets by name (see `SocketFactory`);
    `on_auth_denied(reason)`: a CURVE client was refused (server role)."""
    curve = None
    if security.curve_dir:
        curve = load_curve_keys(security.curve_dir, role, security.client_name)
    return SocketFactory(curve=curve, receive=receive, on_auth_denied=on_auth_denied)


def _warn_denied(reason: str) -> None:
    logger.warning("refused a CURVE client (%s)", reason)


class SocketFactory:
    """Creates configured sockets on one context; starts the Curve authenticator once for
    server sockets when keys are given."""

    def __init__(
        self,
        context: zmq.Context | None = None,
        curve: CurveKeys | None = None,
        max_message_bytes: int = 512 * 1024 * 1024,
        linger_ms: int = 1000,
        receive: Mapping[str, ReceiveLimits] | None = None,
        on_auth_denied: Callable[[str], None] | None = None,
    ):
        """`receive`: the limits a role's receiving sockets get, by socket name (the learner:
        `learner_receive_limits`); a socket without any keeps `max_message_bytes`.
        `on_auth_denied(reason)` is called from the authenticator's thread for each refused
        CURVE client (default: a warning)."""
        self.context = context or zmq.Context.instance()
        self.curve = curve
        self.max_message_bytes = max_message_bytes
        self.linger_ms = linger_ms
        self.receive = dict(receive or {})
        self.on_auth_denied = on_auth_denied or _warn_denied
        self._auth = None

    def _ensure_authenticator(self) -> None:
        if self._auth is not None or self.curve is None:
            return
        from asyncrl.protocol.auth import start_authenticator

        dirs = [d for d in (self.curve.allowed_clients_dir, self.curve.operators_dir) if d]
        self._auth = start_authenticator(self.context, dirs, self.on_auth_denied)

    def socket(
        self, kind: int, *, server: bool, receive: ReceiveLimits | None = None
    ) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, self.linger_ms)
        if receive is None:
            sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
        else:
            sock.setsockopt(zmq.MAXMSGSIZE, receive.decode.max_frame_bytes)
            sock.setsockopt(zmq.RCVHWM, receive.hwm)
        if kind in (zmq.DEALER, zmq.PUSH, zmq.ROUTER):
            sock.setsockopt(zmq.IMMEDIATE, 1)
        if kind == zmq.ROUTER:
            # Replies to a peer that vanished are dropped instead of raising.
            sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        if self.curve is not None:
            if server:
                self._ensure_authenticator()
                sock.curve_server = True
                sock.curve_publickey = self.curve.public
                sock.curve_secretkey = self.curve.secret
            else:
                sock.curve_publickey = self.curve.public
                sock.curve_secretkey = self.curve.secret
                sock.curve_serverkey = self.curve.server_public
        return sock

    def close(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


def send(
    sock: zmq.Socket, msg: Message, prefix: list | None = None, flags: int = 0, track: bool = False
):
    """Send `msg` (after routing `prefix` frames for ROUTER sockets) without copying arrays.
    `track`: return a zmq.MessageTracker that is done once ZeroMQ no longer reads the arrays
    (their memory may be reused only then)."""
    frames = list(prefix or []) + encode(msg)
    return sock.send_multipart(frames, flags=flags, copy=False, track=track)


def recv(
    sock: zmq.Socket, limits: DecodeLimits = DEFAULT_LIMITS, routed: bool = False, flags: int = 0
) -> tuple[list, Message]:
    """Receive and decode one message. Returns (routing frames, message); raises
    ProtocolError on malformed input (the caller counts it)."""
    prefix, msg, _ = recv_from(sock, limits, routed, flags)
    return prefix, msg


def recv_from(
    sock: zmq.Socket, limits: DecodeLimits = DEFAULT_LIMITS, routed: bool = False, flags: int = 0
) -> tuple[list, Message, str]:
    """(routing frames, message, sender's CURVE key): `recv_peer` without the address."""
    prefix, msg, key, _ = recv_peer(sock, limits, routed, flags)
    return prefix, msg, key


def recv_peer(
    sock: zmq.Socket, limits: DecodeLimits = DEFAULT_LIMITS, routed: bool = False, flags: int = 0
) -> tuple[list, Message, str, str]:
    """`recv`, plus the sender's CURVE public key (Z85, "" without CURVE): leases are bound to
    it, and a PULL socket has no routing identity to tell senders apart.

    Frames are taken one at a time, so a message with more frames than the protocol allows, or
    with a frame larger than any legitimate one, is drained and dropped (`frames`, `oversize`)
    without ever being held whole on our side. Last: the sender's IP address ("" when
    ZeroMQ does not say, e.g. over inproc)."""
    frame = sock.recv(flags, copy=False)
    frames = [frame]
    keep = limits.max_frames + (1 if routed else 0)
    largest = limits.max_frame_bytes
    why = ""
    while frame.more:
        # The rest of a multipart message is already queued (ZeroMQ delivers it atomically).
        frame = sock.recv(copy=False)
        if why:
            continue
        if len(frames) >= keep:
            why, frames = "frames", []
        elif len(frame) > largest:
            why, frames = "oversize", []
        else:
            frames.append(frame)
    if not why and not routed and len(frames[0]) > largest:
        why = "oversize"
    if why:
        raise ProtocolError(why, "too many frames" if why == "frames" else "frame too large")
    prefix: list = []
    if routed:
        prefix, frames = [frames[0].bytes], frames[1:]
    key = peer_key(frames[0]) if frames else ""
    address = _frame_property(frames[0], "Peer-Address") if frames else ""
    try:
        return prefix, decode(frames, limits), key, address
    except ProtocolError as exc:
        exc.prefix = prefix  # so the receiver can answer a refusal
        raise


def peer_key(frame: zmq.Frame) -> str:
    """The user id ZAP gave the sender of `frame`: pyzmq's authenticator sets the client's
    CURVE public key (Z85). "" when no ZAP handler ran (no CURVE)."""
    return _frame_property(frame, "User-Id")


def _frame_property(frame, name: str) -> str:
    try:
        return frame.get(name) or ""
    except (zmq.ZMQError, AttributeError):
        return ""


# Picked ports stay unbound until the child that owns them binds; a port from the kernel's
# ephemeral range can meanwhile become the source port of any outgoing connection on the host
# (a generator dialling the learner, a scrape, gloo), which then fails the bind.
PICK_RANGE_FLOOR = 20000  # below: well-known services (8080, Prometheus's 9090, ...)


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _pick_candidates(n: int) -> list[int]:
    """Ports outside the ephemeral range, in random order (two callers rarely collide)."""
    import random

    low, high = _ephemeral_range()
    outside = [*range(PICK_RANGE_FLOOR, low), *range(high + 1, 65536)]
    return random.sample(outside, min(len(outside), max(4 * n, 64)))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now; see `free_ports`."""
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct TCP ports free on `host` right now, for children to bind.

    Taken outside the kernel's ephemeral range where it leaves room, so no outgoing
    connection can take one before its owner binds it; a race with another process picking
    ports the same way remains possible. All are held open until every one is chosen."""
    import socket

    socks: list[socket.socket] = []
    try:
        for port in _pick_candidates(n):
            if len(socks) == n:
                break
            s = socket.socket()
            try:
                s.bind((host, port))
            except OSError:
                s.close()
                continue
            socks.append(s)
        while len(socks) < n:  # no room outside the ephemeral range: let the kernel pick
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()

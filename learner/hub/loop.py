"""The hub's socket loop: one thread owns the ZeroMQ sockets (they are not thread-safe),
receives, guards and dispatches; it does no work of its own and never waits on a reward.

Sockets: control (ROUTER: hello, leases, heartbeats, weight chunks, nccl), rollouts (PULL),
weights (PUB: version announcements) and an inproc wake-up pair so an announcement goes out at
once rather than at the next poll timeout. Every handler runs under a guard: a malformed
message is counted by reason, anything else unexpected as `internal`; the loop goes on. Every
message read is counted exactly once: malformed (by reason), a control message, or a rollout
received.

The receiving sockets take the factory's limits for `control` and `rollouts` (per-frame size,
messages queued per peer); a socket monitor on each counts connections that end or fail their
handshake, which is where a peer ZeroMQ dropped for an oversize frame shows.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
from collections.abc import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from asyncrl.learner.hub.core import RateLimitedLog
from asyncrl.learner.hub.peers import Sender
from asyncrl.learner.hub.serving import WeightServing
from asyncrl.learner.metrics import LearnerMetrics
from asyncrl.protocol.codec import ProtocolError, SchemaMismatch
from asyncrl.protocol.messages import (
    RELEASE,
    SCHEMA_VERSION,
    Finished,
    Heartbeat,
    Hello,
    LeaseRequest,
    LeaseReturn,
    NcclJoin,
    NcclPull,
    Refused,
    RolloutGroup,
    WeightsRequest,
)
from asyncrl.protocol.operator import Tune
from asyncrl.protocol.sockets import ReceiveLimits, SocketFactory, recv_peer, send

logger = logging.getLogger(__name__)

# A finished run is announced this often until the hub stops: PUB drops what a subscriber
# that is (re)connecting misses.
FINISHED_EVERY = 0.25
# Messages handled per socket per turn, so one busy socket cannot starve the others.
CONTROL_BATCH = 256
ROLLOUT_BATCH = 64
# What generators send on the control socket; any other well-formed type is `unexpected_type`.
# Operators send `Tune` there too (`asyncrl ctl`).
CONTROL_TYPES = (
    Hello,
    Heartbeat,
    LeaseRequest,
    LeaseReturn,
    WeightsRequest,
    NcclJoin,
    NcclPull,
    Tune,
)
_MONITOR_EVENTS = {
    zmq.EVENT_DISCONNECTED: "disconnected",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth",
}


class SocketLoop:
    def __init__(
        self,
        factory: SocketFactory,
        metrics: LearnerMetrics,
        log: RateLimitedLog,
        serving: WeightServing,
        *,
        on_control: Callable[[object, float, Sender], object | None],
        on_rollout: Callable[[RolloutGroup, str], None],
        rollouts_open: Callable[[], bool],
        housekeeping: Callable[[float], None],
        housekeeping_every: float,
        on_tune: Callable[[Tune, Sender], object] | None = None,
    ):
        """`on_control(msg, now, sender)` answers a control message (None: nothing to send
        back); `on_rollout(group, curve_key)` takes a group; rollouts are read only while
        `rollouts_open()` (the reward pool has room), so a busy pool holds groups back in
        ZeroMQ's queues. `on_tune(msg, sender)` answers an operator's `Tune`."""
        self.factory = factory
        self.metrics = metrics
        self.log = log
        self.serving = serving
        self.on_control = on_control
        self.on_rollout = on_rollout
        self.rollouts_open = rollouts_open
        self.housekeeping = housekeeping
        self.housekeeping_every = housekeeping_every
        self.on_tune = on_tune
        self.limits = {
            name: factory.receive.get(name, ReceiveLimits()) for name in ("control", "rollouts")
        }
        self.ports: dict[str, int] = {}
        self.endpoints: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sockets: list = []  # closed by `stop`
        self._wake_lock = threading.Lock()
        self.failure = ""  # why the loop thread ended, if it ended by an error
        self.cpu_seconds = 0.0
        self.finished: Finished | None = None  # set once the run reached its end

    def bind(self, host: str, control: int, rollouts: int, weights: int) -> None:
        """Bind the sockets (port 0: any free port); `endpoints` then says where."""
        f = self.factory
        self.control = f.socket(zmq.ROUTER, server=True, receive=self.limits["control"])
        self.rollouts = f.socket(zmq.PULL, server=True, receive=self.limits["rollouts"])
        self.pub = f.socket(zmq.PUB, server=True)
        events = 0
        for event in _MONITOR_EVENTS:
            events |= event
        self._monitors = [s.get_monitor_socket(events) for s in (self.control, self.rollouts)]
        for name, sock, port in (
            ("control", self.control, control),
            ("rollouts", self.rollouts, rollouts),
            ("weights", self.pub, weights),
        ):
            if port == 0:
                port = sock.bind_to_random_port(f"tcp://{host}")
            else:
                sock.bind(f"tcp://{host}:{port}")
            self.ports[name] = port
        wake = f"inproc://asyncrl-hub-wake-{id(self)}"
        self._wake_rx = f.context.socket(zmq.PULL)
        self._wake_rx.bind(wake)
        self._wake_tx = f.context.socket(zmq.PUSH)
        self._wake_tx.connect(wake)
        self._sockets = [
            *self._monitors,
            self.control,
            self.rollouts,
            self.pub,
            self._wake_rx,
            self._wake_tx,
        ]
        shown = host if host not in ("0.0.0.0", "*") else socket.gethostname()
        self.endpoints = {k: f"tcp://{shown}:{p}" for k, p in self.ports.items()}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="hub", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            self._run()
        except Exception as exc:
            # Handlers are guarded; what gets here broke the loop itself (a socket error).
            # The trainer sees `failure` at its next wait and ends the run.
            self.failure = f"{type(exc).__name__}: {exc}"
            logger.critical("hub socket loop stopped: %s", self.failure, exc_info=True)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sockets:
            self.control.disable_monitor()
            self.rollouts.disable_monitor()
        for s in self._sockets:
            s.close(linger=0)

    def finish(self, version: int) -> None:
        """The run ended normally: from now on tell generators so (published, and the reply
        to their hellos and lease requests), so they exit instead of reconnecting forever."""
        self.finished = Finished(version)
        self.wake()

    def wake(self) -> None:
        """Called from any thread: run a turn of the loop now."""
        with self._wake_lock:  # the PUSH end is shared by publishing threads
            try:
                self._wake_tx.send(b"", zmq.NOBLOCK)
            except zmq.Again:
                pass  # a thousand wake-ups are already queued

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        poller.register(self.rollouts, zmq.POLLIN)
        poller.register(self._wake_rx, zmq.POLLIN)
        for mon in self._monitors:
            poller.register(mon, zmq.POLLIN)
        next_housekeeping = next_finished = 0.0
        while not self._stop.is_set():
            # This thread's CPU time: taken from the trainer when both share a core.
            self.cpu_seconds = time.thread_time()
            # Held chunk requests are answered within a millisecond of their chunk's writing
            # (about the time a 4 MiB chunk takes to copy).
            events = dict(poller.poll(1 if self.serving.store.deferred else 50))
            if self._wake_rx in events:
                while self._wake_rx.poll(0):
                    self._wake_rx.recv()
            if self.control in events:
                for _ in range(CONTROL_BATCH):
                    if not self._guarded(self._control_once):
                        break
            # Held requests came from peers: what answering them did not expect is counted.
            self._guarded(functools.partial(self.serving.serve_deferred, self.control))
            if self.rollouts in events:
                for _ in range(ROLLOUT_BATCH):
                    if not self.rollouts_open() or not self._guarded(self._rollout_once):
                        break
            for mon in self._monitors:
                if mon in events:
                    self._guarded(functools.partial(self._peer_events, mon))
            ann = self.serving.take_announcement()
            if ann is not None:
                send(self.pub, ann)
            now = time.time()
            if self.finished is not None and now >= next_finished:
                send(self.pub, self.finished)
                next_finished = now + FINISHED_EVERY
            if now >= next_housekeeping:
                self._guarded(functools.partial(self.housekeeping, now))
                next_housekeeping = now + self.housekeeping_every

    def _guarded(self, handle: Callable[[], bool | None]) -> bool:
        """Run one handler; what it did not expect is counted, logged and survived."""
        try:
            return bool(handle())
        except Exception:
            self.metrics.malformed.labels(reason="internal").inc()
            self.log.warning("internal", "hub handler failed", exc_info=True)
            return True

    def _peer_events(self, mon: zmq.Socket) -> None:
        while mon.poll(0):
            event = recv_monitor_message(mon, zmq.NOBLOCK)["event"]
            reason = _MONITOR_EVENTS.get(event)
            if reason is not None:
                self.metrics.peer_disconnects.labels(reason=reason).inc()
                if reason != "disconnected":
                    self.log.warning("peer-" + reason, "a peer's %s failed", reason)

    def _recv(self, sock, limits: ReceiveLimits, routed: bool):
        """(prefix, message, CURVE key, address); None when nothing is queued; False for a
        malformed message."""
        try:
            return recv_peer(sock, limits.decode, routed=routed, flags=zmq.NOBLOCK)
        except zmq.Again:
            return None
        except ProtocolError as exc:
            self.metrics.malformed.labels(reason=exc.reason).inc()
            if isinstance(exc, SchemaMismatch) and exc.msg_type == "hello" and exc.prefix:
                self._refuse_schema(exc.prefix, exc.schema, exc.release)
            else:
                self.log.warning("malformed", "dropped malformed message: %s", exc)
            return False

    def _refuse_schema(self, prefix: list, schema, release: str) -> None:
        """A generator of another wire schema said hello: tell it why it gets nothing (a
        release that knows `Refused` exits with this line), count and log it."""
        release = "".join(c if c.isprintable() else "?" for c in release)[:64]
        detail = (
            f"wire schema {schema} (asyncrl {release}) refused: this learner speaks schema "
            f"{SCHEMA_VERSION} (asyncrl {RELEASE}); run the same release on both sides"
        )
        self.metrics.hellos_refused.labels(reason="schema").inc()
        self.log.warning("schema", "generator refused: %s", detail)
        send(self.control, Refused("schema", detail, SCHEMA_VERSION, RELEASE), prefix=prefix)

    def _control_once(self) -> bool:
        got = self._recv(self.control, self.limits["control"], routed=True)
        if not got:
            return got is False
        prefix, msg, key, address = got
        if not isinstance(msg, CONTROL_TYPES) or (isinstance(msg, Tune) and not self.on_tune):
            self.metrics.malformed.labels(reason="unexpected_type").inc()
            self.log.warning("unexpected", "unexpected %s on the control socket", msg.TYPE)
            return True
        self.metrics.control_received.inc()
        if isinstance(msg, WeightsRequest):
            self.serving.serve(self.control, prefix, msg)
            return True
        if isinstance(msg, Hello) and msg.schema != SCHEMA_VERSION:
            self._refuse_schema(prefix, msg.schema, msg.release[:64])
            return True
        if isinstance(msg, Tune):
            reply = self.on_tune(msg, Sender(prefix[0], key, address))
        elif self.finished is not None and isinstance(msg, (Hello, LeaseRequest)):
            reply = self.finished  # no new work, and a reconnecting generator learns why
        elif isinstance(msg, (NcclJoin, NcclPull)):
            reply = self.serving.on_nccl(msg, prefix[0])
        else:
            reply = self.on_control(msg, time.time(), Sender(prefix[0], key, address))
        if reply is not None:
            send(self.control, reply, prefix=prefix)
        return True

    def _rollout_once(self) -> bool:
        got = self._recv(self.rollouts, self.limits["rollouts"], routed=False)
        if not got:
            return got is False
        _, msg, key, _ = got
        if not isinstance(msg, RolloutGroup):
            self.metrics.malformed.labels(reason="unexpected_type").inc()
            self.log.warning("unexpected", "unexpected %s on the rollouts socket", msg.TYPE)
            return True
        self.metrics.received.inc()
        self.on_rollout(msg, key)
        return True

"""The generator's session with the learner: sockets, hello, leases, heartbeats, sends.

Three sockets talk to the learner's hub: a DEALER for requests (hello, leases, weight chunks),
a PUSH for rollout groups and a SUB for weight announcements; a heartbeat thread uses its own
DEALER. A learner that stays silent for `reconnect_seconds` surfaces as `LearnerGone`, and the
caller rebuilds the session with backoff. Nothing here ever blocks in a send, and once `stop`
is set nothing waits long for a learner that may already have exited.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

import zmq

from asyncrl.generators.backends.base import Backend
from asyncrl.protocol.codec import ProtocolError
from asyncrl.protocol.messages import (
    Finished,
    Heartbeat,
    Hello,
    Lease,
    LeaseDenied,
    LeaseRequest,
    LeaseReturn,
    Message,
    Refused,
    RolloutGroup,
    WeightsAnnouncement,
    Welcome,
)
from asyncrl.protocol.sockets import SocketFactory, recv, send

logger = logging.getLogger(__name__)

# How long a generator that was told to stop still waits for a learner to take its last
# group or its returned lease.
SHUTDOWN_GRACE_SECONDS = 2.0


class Stopping(Exception):
    """Raised inside the loop when a shutdown makes waiting for the learner pointless."""


class LearnerGone(RuntimeError):
    """No reply from the learner within the reconnect timeout."""


class LearnerRefused(Exception):
    """The learner refused this generator for good (`Refused`: another wire schema, or an
    operator's key): reconnecting cannot help, so the generator exits with the learner's
    reason."""


class RunFinished(Exception):
    """The learner announced that its run finished (`Finished`): nothing more to do."""

    def __init__(self, version: int):
        super().__init__(f"the learner finished its run at version {version}")
        self.version = version


class Session:
    """One connection to the learner at a time: `connect` opens it, `close` ends it."""

    def __init__(
        self,
        backend: Backend,
        generator_id: str,
        learner: str,
        factory: SocketFactory,
        reconnect_seconds: float,
        stop: threading.Event,
        reject: Callable[[str, str], object] | None = None,
    ):
        self.backend = backend
        # Counts and logs (rate-limited) a message from the learner we dropped: a malformed
        # reply is dropped and the wait goes on; the learner's own deadline handles the rest.
        self.reject = reject or (lambda reason, detail: logger.warning("%s: %s", reason, detail))
        self.generator_id = generator_id
        self.learner = learner
        self.factory = factory
        self.reconnect_seconds = reconnect_seconds
        self.stop = stop
        self.connected = False
        self.last_error = ""
        self.lease_seconds = 0.0
        self.heartbeat_seconds = 0.0
        # The learner's token for our session (`Welcome.session`): heartbeats, sent over their
        # own socket, present it; after a reconnect the next hello does, so the leases this
        # generator holds follow it to the new connection.
        self.session_token = ""
        self._held: set[str] = set()
        self._held_lock = threading.Lock()
        # Lease prefetch: LeaseRequests out whose replies have not been taken; `_early` keeps
        # those replies that arrive while we wait for another (a weight chunk, an ack).
        self._outstanding = 0
        self._early: deque[Message] = deque()
        self._socks: list[zmq.Socket] = []
        self._hb: threading.Thread | None = None
        self._hb_stop = threading.Event()

    # ---------------------------------------------------------------- connection
    def connect(self) -> Welcome:
        """Say hello and open the rollout and announcement sockets the welcome names."""
        self.control = self._dealer()
        self._socks = [self.control]
        welcome = self.hello()
        if not isinstance(welcome, Welcome):
            raise LearnerGone(f"expected welcome, got {welcome.TYPE}")
        host = urlparse(self.learner).hostname
        self.push = self.factory.socket(zmq.PUSH, server=False)
        self.push.connect(f"tcp://{host}:{welcome.rollouts_port}")
        self.sub = self.factory.socket(zmq.SUB, server=False)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(f"tcp://{host}:{welcome.weights_port}")
        self._socks += [self.push, self.sub]
        self.heartbeat_seconds = welcome.heartbeat_seconds
        self.lease_seconds = welcome.lease_seconds
        self._outstanding, self._early = 0, deque()  # a new socket: nothing is outstanding
        self.connected = True
        self.last_error = ""
        logger.info("connected to %s (learner version %d)", self.learner, welcome.learner_version)
        self._hb_stop = threading.Event()
        self._hb = threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True)
        self._hb.start()
        return welcome

    def close(self) -> None:
        self.connected = False
        if self._hb is not None:
            self._hb_stop.set()
            self._hb.join(timeout=5)
            self._hb = None
        for s in self._socks:
            s.close(linger=500)
        self._socks = []

    def hello(self) -> Message:
        """Hello; the reply is a Welcome naming the learner's latest weights and our session."""
        reply = self.request(
            Hello(self.generator_id, self.backend.name, self.backend.version, self.session_token)
        )
        if isinstance(reply, Welcome):
            self.session_token = reply.session
        return reply

    # ---------------------------------------------------------------- leases
    def next_leases(self, k: int = 1) -> list[Lease] | LeaseDenied:
        """Up to `k` leases: the prefetched ones if any came, else the replies to `k` fresh
        requests (sent together: one round trip). A prefetched denial is stale by the time it
        is read (our last groups have landed since), so it asks again; the denial is returned
        only when no request got a lease."""
        leases: list[Lease] = []
        while self._outstanding and len(leases) < k:
            reply = self.reply(lease=True)
            if isinstance(reply, Lease):
                leases.append(reply)
        if leases:
            return leases
        self.prefetch_leases(k)
        denied = None
        try:
            for _ in range(k):
                # Shutting down: no new work is wanted, so do not wait out a silent learner.
                reply = self.reply(lease=True, stoppable=True)
                if isinstance(reply, Lease):
                    leases.append(reply)
                else:
                    denied = reply
        except Stopping:
            # Granted but never to be generated: back at once rather than at their deadline
            # (the replies still out are taken by `return_prefetched`).
            self._hand_back([lease.lease_id for lease in leases])
            raise
        return leases or denied

    def prefetch_leases(self, k: int = 1) -> None:
        """Ask for `k` leases now; the replies wait in the socket until `next_leases`."""
        for _ in range(k):
            self.send(LeaseRequest(self.generator_id, self.backend.version))
            self._outstanding += 1

    def return_prefetched(self) -> None:
        """Shutting down: hand prefetched leases back so the learner re-issues them at once
        instead of after their deadline."""
        ids = []
        try:
            while self._outstanding:
                reply = self.reply(lease=True, stoppable=True, grace=SHUTDOWN_GRACE_SECONDS)
                if isinstance(reply, Lease):
                    ids.append(reply.lease_id)
        except (LearnerGone, Stopping):
            pass  # what did not come expires on the learner and is re-issued then
        self._hand_back(ids)

    def _hand_back(self, lease_ids: list[str]) -> None:
        if not lease_ids:
            return
        try:
            self.send(LeaseReturn(self.generator_id, lease_ids))
            # The ack: the return landed before sockets close.
            self.reply(stoppable=True, grace=SHUTDOWN_GRACE_SECONDS)
            logger.info("returned %d unstarted leases", len(lease_ids))
        except (LearnerGone, Stopping):
            pass  # they expire on the learner and are re-issued then

    @contextmanager
    def holding(self, *leases: Lease) -> Iterator[None]:
        """Heartbeats name `leases` as worked on while the block runs."""
        ids = {lease.lease_id for lease in leases}
        with self._held_lock:
            self._held |= ids
        try:
            yield
        finally:
            with self._held_lock:
                self._held -= ids

    def push_group(self, group: RolloutGroup) -> None:
        # The PUSH socket blocks at its high-water mark rather than dropping: bounded here
        # so a vanished learner cannot hang us (the lease then expires and is re-issued).
        self._send_on(self.push, group, "rollouts socket not writable")

    # ---------------------------------------------------------------- announcements
    def announcements(self) -> Iterator[WeightsAnnouncement]:
        """The weight announcements received so far, without waiting."""
        while True:
            try:
                _, msg = recv(self.sub, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            except ProtocolError as exc:
                self.reject("malformed", f"announcement: {exc}")
                continue
            if isinstance(msg, Finished):
                raise RunFinished(msg.version)
            if isinstance(msg, WeightsAnnouncement):
                yield msg

    def wait_announcement(self, seconds: float) -> None:
        """Sleep until an announcement arrives or `seconds` pass."""
        self.sub.poll(int(seconds * 1000), zmq.POLLIN)

    # ---------------------------------------------------------------- requests
    def request(self, msg: Message) -> Message:
        """Send `msg` and wait for its reply (not for lease requests: `next_leases`)."""
        self.send(msg)
        # Shutting down: no new work is wanted, so do not wait out a silent learner.
        return self.reply(stoppable=True)

    def send(self, msg: Message) -> None:
        self._send_on(self.control, msg, f"could not send {msg.TYPE}")

    def reply(self, lease: bool = False, stoppable: bool = False, grace: float = 0.0) -> Message:
        """The next reply on the control socket. Replies to prefetched lease requests may
        arrive while we wait for another: they are kept aside and returned only to a caller
        that asks for a lease reply (`lease`), which skips anything else. `stoppable`: give up with
        Stopping once shutdown begins and `grace` seconds of waiting have passed.
        LearnerGone after `reconnect_seconds` of silence."""
        start = time.time()
        deadline = start + self.reconnect_seconds
        while True:
            if lease and self._early:
                self._outstanding -= 1
                return self._early.popleft()
            if not self.control.poll(200):
                if time.time() >= deadline:
                    raise LearnerGone(f"no reply within {self.reconnect_seconds}s")
                if stoppable and self.stop.is_set() and time.time() - start >= grace:
                    raise Stopping()
                continue
            try:
                _, reply = recv(self.control)
            except ProtocolError as exc:
                self.reject("malformed", f"control reply: {exc}")
                continue
            if isinstance(reply, Finished):
                raise RunFinished(reply.version)
            if isinstance(reply, Refused):
                raise LearnerRefused(f"the learner refused this generator: {reply.detail}")
            deadline = time.time() + self.reconnect_seconds
            is_lease = isinstance(reply, (Lease, LeaseDenied))
            if is_lease and not lease and self._outstanding > len(self._early):
                self._early.append(reply)  # an outstanding lease request's: kept for later
            elif lease and not is_lease:
                logger.debug("stray %s reply dropped while waiting for a lease", reply.TYPE)
            else:
                if is_lease and self._outstanding:
                    self._outstanding -= 1
                return reply

    def drain_replies(self, n: int) -> None:
        """Take the replies to `n` requests still outstanding (a fetch given up)."""
        for _ in range(n):
            try:
                self.reply()
            except LearnerGone:
                return

    def _send_on(self, sock: zmq.Socket, msg: Message, what: str) -> None:
        """Send once `sock` takes it, without ever blocking in the send itself: the learner
        can vanish between the poll that said writable and the send, and a blocking send
        would then wait out SNDTIMEO (PUSH: forever) instead of the shutdown grace."""
        start = time.time()
        # Tried first without a poll: a writable socket (the usual case) then costs one call,
        # not a poll too, which on a loaded core can wait out a scheduler slice.
        try:
            send(sock, msg, flags=zmq.NOBLOCK)
            return
        except zmq.Again:
            pass
        while True:
            self._wait_writable(sock, what, start)
            try:
                send(sock, msg, flags=zmq.NOBLOCK)
                return
            except zmq.Again:
                time.sleep(0.05)  # the peer left after the poll: wait for writable again

    def _wait_writable(self, sock: zmq.Socket, what: str, start: float) -> None:
        """Wait until `sock` takes a message (a DEALER or PUSH with no learner connected
        does not): LearnerGone after `reconnect_seconds`, Stopping after a short grace once
        shutdown began, so SIGTERM is not held up by a learner that already exited."""
        while not sock.poll(200, zmq.POLLOUT):
            waited = time.time() - start
            if self.stop.is_set() and waited >= SHUTDOWN_GRACE_SECONDS:
                raise Stopping()
            if waited >= self.reconnect_seconds:
                raise LearnerGone(f"{what}: no learner connected")

    def _dealer(self) -> zmq.Socket:
        """A control-socket connection. With IMMEDIATE set a DEALER send blocks while no
        learner is connected, so sends are bounded: a vanished learner must surface as
        LearnerGone (reconnect) and never hang the generator or its shutdown."""
        sock = self.factory.socket(zmq.DEALER, server=False)
        sock.setsockopt(zmq.SNDTIMEO, int(self.reconnect_seconds * 1000))
        sock.connect(self.learner)
        return sock

    def _heartbeats(self) -> None:
        sock = self._dealer()
        # A beat is skipped, never waited for, while no learner is connected: a send blocked
        # for reconnect_seconds would hold up the shutdown that joins this thread.
        sock.setsockopt(zmq.SNDTIMEO, int(self.heartbeat_seconds * 1000))
        try:
            while not self._hb_stop.wait(self.heartbeat_seconds):
                with self._held_lock:
                    held = sorted(self._held)
                beat = Heartbeat(self.generator_id, self.backend.version, held, self.session_token)
                if not sock.poll(200, zmq.POLLOUT):
                    continue  # the main loop notices the learner is gone and reconnects
                try:
                    send(sock, beat)
                except zmq.Again:
                    continue  # the main loop notices the learner is gone and reconnects
                if sock.poll(int(self.heartbeat_seconds * 1000)):
                    sock.recv_multipart()
        finally:
            sock.close(linger=0)


def announcement_of(welcome: Welcome) -> WeightsAnnouncement:
    """The latest version a Welcome describes, as if it had been announced."""
    return WeightsAnnouncement(
        welcome.weights_version,
        welcome.weights_digest,
        welcome.weights_size,
        welcome.weights_chunks,
        welcome.weights_path,
    )

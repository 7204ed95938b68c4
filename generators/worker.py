"""The generator process loop: lease a prompt group, generate it, push it, keep weights fresh.

One process drives one backend. It talks to the learner's hub over three sockets: a DEALER for
requests (hello, leases, weight chunks), a PUSH for rollout groups and a SUB for weight
announcements; a heartbeat thread uses its own DEALER. When the learner goes silent the
sockets are rebuilt with backoff, so a learner restart needs nothing from the operator. On
SIGTERM the current group is finished and pushed, then the process exits.
"""

from __future__ import annotations

import logging
import threading
import time
from urllib.parse import urlparse

import numpy as np
import zmq

from asyncrl.generators.backends.base import SamplingParams
from asyncrl.generators.metrics import GeneratorMetrics
from asyncrl.generators.weights import FETCH_WINDOW, ChunkAssembler, WeightsError
from asyncrl.protocol.codec import ProtocolError
from asyncrl.protocol.messages import (
    Heartbeat,
    Hello,
    Lease,
    LeaseDenied,
    LeaseRequest,
    LeaseReturn,
    Message,
    NcclGroup,
    NcclJoin,
    NcclPlan,
    NcclPull,
    RolloutGroup,
    WeightsAnnouncement,
    WeightsChunk,
    WeightsRequest,
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


class GeneratorWorker:
    """Runs until `stop` is set; survives learner restarts."""

    def __init__(
        self,
        backend,
        generator_id: str,
        learner: str,
        metrics: GeneratorMetrics,
        factory: SocketFactory | None = None,
        reconnect_seconds: float = 10.0,
        fetch_window: int = FETCH_WINDOW,
        inflight_updates: str = "off",
        prefetch_lease: bool = True,
    ):
        self.backend = backend
        self.generator_id = generator_id
        self.learner = learner
        self.metrics = metrics
        self.factory = factory or SocketFactory()
        self.reconnect_seconds = reconnect_seconds
        self.fetch_window = fetch_window
        self.prefetch_lease = prefetch_lease
        self.lease_seconds = 0.0
        self.stop = threading.Event()
        self.connected = False
        self.last_error = ""
        self._held: set[int] = set()
        self._held_lock = threading.Lock()
        self._pending: WeightsAnnouncement | None = None
        # Lease prefetch: a LeaseRequest is out whose reply has not been taken; `_early` keeps
        # that reply when it arrives while we wait for another (a weight chunk, an ack).
        self._prefetching = False
        self._early: Message | None = None
        self._last_generate = 0.0
        self._inflight_load_seconds = 0.0  # weight loads inside the current generate call
        self._spare_blob: bytearray | None = None  # the last loaded blob, reused by the next
        self._nccl_offered = False  # the learner broadcasts weights (Welcome.nccl)
        self._nccl_group: str | None = None  # our server's weight-update group, once joined
        self._socks: list[zmq.Socket] = []
        if inflight_updates != "off" and hasattr(backend, "between_tokens"):
            backend.between_tokens = self._between_tokens
            backend.inflight_mode = inflight_updates

    # ---------------------------------------------------------------- health
    def healthy(self) -> tuple[bool, str]:
        if not self.connected:
            return False, f"not connected to {self.learner}: {self.last_error}"
        return True, f"ok version={self.backend.version}"

    # ---------------------------------------------------------------- main loop
    def run(self) -> None:
        backoff = 0.5
        while not self.stop.is_set():
            try:
                self._connect()
                backoff = 0.5
                self._serve()
            except Stopping:
                break
            except LearnerGone as exc:
                self.last_error = str(exc)
                logger.warning("learner unreachable (%s); reconnecting in %.1fs", exc, backoff)
                self.metrics.reconnects.inc()
            finally:
                self._disconnect()
            if not self.stop.is_set():
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _connect(self) -> None:
        self.control = self._dealer()
        self._socks = [self.control]
        welcome = self._request(Hello(self.generator_id, self.backend.name, self.backend.version))
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
        self._nccl_offered = welcome.nccl
        self._nccl_group = None  # a group belongs to one learner connection: join again
        self._prefetching, self._early = False, None  # a new socket: nothing is outstanding
        self.connected = True
        self.last_error = ""
        logger.info("connected to %s (learner version %d)", self.learner, welcome.learner_version)
        # Not `>`: a learner resumed from a checkpoint may be behind the weights we hold,
        # and its version is the truth (rollouts tagged with a future version are invalid).
        if welcome.weights_version >= 0 and welcome.weights_version != self.backend.version:
            self._pending = _announcement(welcome)
        self._hb_stop = threading.Event()
        self._hb = threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True)
        self._hb.start()

    def _disconnect(self) -> None:
        self.connected = False
        if getattr(self, "_hb", None) is not None:
            self._hb_stop.set()
            self._hb.join(timeout=5)
            self._hb = None
        for s in self._socks:
            s.close(linger=500)
        self._socks = []

    def _serve(self) -> None:
        while not self.stop.is_set():
            self._drain_announcements()
            if self._pending is not None and self._pending.version != self.backend.version:
                self._fetch_weights(self._pending)
            reply = self._next_lease()
            if isinstance(reply, Lease):
                self._prefetch()
                self._work(reply)
            elif isinstance(reply, LeaseDenied):
                self._wait_denied(reply)
            else:
                logger.warning("unexpected reply %s to a lease request", reply.TYPE)
        self._return_prefetched()

    # ---------------------------------------------------------------- leases
    def _next_lease(self) -> Message:
        """The prefetched lease if one is out, else the reply to a fresh request. A prefetched
        denial is stale by the time it is read (our last group has landed since): ask again."""
        if self._prefetching:
            reply = self._reply(lease=True)
            if isinstance(reply, Lease):
                return reply
        return self._request(LeaseRequest(self.generator_id, self.backend.version))

    def _prefetch(self) -> None:
        """Ask for the next lease before generating this one: the learner's reply waits in the
        socket, so the round trip is off the critical path. The gate sees the version we hold
        now, which is at most the one the next group is generated with (the bound holds)."""
        if not self.prefetch_lease or self.stop.is_set():
            return
        if not self.lease_seconds or self._last_generate > self.lease_seconds / 4:
            # Not heartbeated until read: it must not expire while the current group runs.
            return
        self._send(LeaseRequest(self.generator_id, self.backend.version))
        self._prefetching = True

    def _return_prefetched(self) -> None:
        """Shutting down: hand a prefetched lease back so the learner re-issues it at once
        instead of after its deadline."""
        if not self._prefetching:
            return
        try:
            reply = self._reply(lease=True, stoppable=True)
            if isinstance(reply, Lease):
                self._send(LeaseReturn(self.generator_id, [reply.lease_id]))
                self._reply(stoppable=True)  # the ack: the return landed before sockets close
                logger.info("returned prefetched lease %d", reply.lease_id)
        except (LearnerGone, Stopping):
            pass  # the lease expires on the learner and is re-issued then

    def _work(self, lease: Lease) -> None:
        with self._held_lock:
            self._held.add(lease.lease_id)
        try:
            params = SamplingParams(
                lease.temperature,
                lease.top_p,
                lease.top_k,
                lease.max_new_tokens,
                stop=tuple(lease.stop),
            )
            t = time.time()
            self._inflight_load_seconds = 0.0
            samples = self.backend.generate(lease.prompt_ids, lease.group_size, params)
            baseline = None
            if lease.greedy_baseline:
                baseline = self.backend.generate_greedy(lease.prompt_ids, lease.max_new_tokens)
            # Generation work only: weight loads in the middle of it are not generating, and
            # the learner reports generate_seconds as the generators' busy time.
            dt = time.time() - t - self._inflight_load_seconds
            self._last_generate = dt
            group = RolloutGroup(
                lease_id=lease.lease_id,
                generator_id=self.generator_id,
                tokens=_cat([s.tokens for s in samples], np.int32),
                logprobs=_cat([s.logprobs for s in samples], np.float32),
                versions=_cat([s.versions for s in samples], np.int32),
                lengths=np.array([len(s.tokens) for s in samples], dtype=np.int32),
                finish_reasons=[s.finish_reason for s in samples],
                generate_seconds=dt,
                baseline_tokens=baseline,
            )
            # The PUSH socket blocks at its high-water mark rather than dropping: bounded here
            # so a vanished learner cannot hang us (the lease then expires and is re-issued).
            self._send_on(self.push, group, "rollouts socket not writable")
            self.metrics.groups.inc()
            self.metrics.tokens.inc(int(group.lengths.sum()))
            self.metrics.generate_seconds.inc(dt)
        finally:
            with self._held_lock:
                self._held.discard(lease.lease_id)

    def _wait_denied(self, denied: LeaseDenied) -> None:
        """Sleep on the weights socket (a new version is what usually unblocks the gate)."""
        t = time.time()
        if denied.learner_version != self.backend.version and self._pending is None:
            # We may have missed an announcement (PUB drops while connecting): ask again.
            welcome = self._request(
                Hello(self.generator_id, self.backend.name, self.backend.version)
            )
            if isinstance(welcome, Welcome) and welcome.weights_version not in (
                -1,
                self.backend.version,
            ):
                self._pending = _announcement(welcome)
        if self._pending is None:
            self.sub.poll(int(max(denied.retry_after, 0.01) * 1000), zmq.POLLIN)
        self.metrics.gate_wait_seconds.inc(time.time() - t)

    # ---------------------------------------------------------------- weights
    def _between_tokens(self) -> None:
        """Called by the backend between decode steps: load a newer version if one was
        announced, so a long generation does not finish on stale weights."""
        if not self.connected:
            return
        self._drain_announcements()
        if self._pending is None or self._pending.version <= self.backend.version:
            return
        if not self._pending.digest:
            return  # still being written: decode on until it is announced complete
        t = time.time()
        try:
            self._fetch_weights(self._pending)
        except LearnerGone:
            return  # the main loop finds out on its next request and reconnects
        finally:
            self._inflight_load_seconds += time.time() - t
        self.metrics.inflight_updates.inc()

    def _drain_announcements(self) -> None:
        while True:
            try:
                _, msg = recv(self.sub, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            except ProtocolError as exc:
                logger.warning("malformed announcement dropped: %s", exc)
                continue
            if isinstance(msg, WeightsAnnouncement) and msg.version > self.backend.version:
                p = self._pending
                # A streamed version is announced twice: as it starts, then complete.
                completes = p is not None and msg.version == p.version and bool(msg.digest)
                if p is None or msg.version > p.version or completes:
                    self._pending = msg

    def _load_from_disk(self, ann: WeightsAnnouncement) -> bool:
        """Disk transport: load the version from shared storage; False (fetch chunks
        instead) when the path is not visible here or the load fails."""
        from pathlib import Path

        from asyncrl.protocol.blob import digest_of

        file = Path(ann.path) / "model.safetensors"
        if not ann.path or not file.exists():
            return False
        t = time.time()
        try:
            blob = file.read_bytes()
            if digest_of(blob) != ann.digest:
                raise WeightsError(f"{file} does not match the announced digest")
            if hasattr(self.backend, "update_from_disk"):
                self.backend.update_from_disk(ann.path, ann.version)  # the server reads it
            else:
                self.backend.load_weights(blob, ann.digest, ann.version)
        except Exception as exc:  # fall back to the chunked fetch; count it
            self.metrics.weight_errors.inc()
            logger.warning("version %d from disk failed (%s); fetching chunks", ann.version, exc)
            return False
        self._loaded(ann, t, "from disk")
        return True

    def _pull_nccl(self, ann: WeightsAnnouncement) -> bool:
        """nccl transport: have the server join our weight-update group (once per
        connection) and receive the version as the learner broadcasts it. False (fetch
        chunks instead) when not offered, not supported by the backend, or failed; a failed
        group is joined afresh next time."""
        if not self._nccl_offered or not hasattr(self.backend, "update_from_buckets"):
            return False
        t = time.time()
        try:
            if self._nccl_group is None:
                world = self.backend.nccl_world_size()
                group = self._request(NcclJoin(self.generator_id, world))
                if not isinstance(group, NcclGroup) or group.error:
                    raise WeightsError(f"no weight-update group: {getattr(group, 'error', group)}")
                self.backend.join_update_group(
                    group.address, group.port, group.group_name, group.backend, world
                )
                self._nccl_group = group.group_name
            plan = self._request(NcclPull(self.generator_id, ann.version, self._nccl_group))
            if not isinstance(plan, NcclPlan):
                raise WeightsError(f"expected nccl_plan, got {plan.TYPE}")
            if plan.missing and plan.reason == "version no longer held":
                self.metrics.weight_errors.inc()
                self._pending = None  # superseded: wait for the newer announcement
                return True
            if plan.missing:
                self._nccl_group = None
                raise WeightsError(plan.reason)
            self.backend.update_from_buckets(plan, ann.version, self._nccl_group)
        except (LearnerGone, Stopping):
            raise
        except Exception as exc:  # fall back to chunks for this version; count it
            self._nccl_group = None
            self.metrics.weight_errors.inc()
            logger.warning("version %d over nccl failed (%s); fetching chunks", ann.version, exc)
            return False
        self._loaded(ann, t, "over nccl")
        return True

    def _fetch_weights(self, ann: WeightsAnnouncement) -> None:
        if self._load_from_disk(ann) or self._pull_nccl(ann):
            return
        t = time.time()
        assembler = ChunkAssembler(ann.size, ann.chunks, reuse=self._spare_blob)
        self._spare_blob = None
        next_index = 0
        outstanding = 0
        digest = ann.digest  # "" when announced as it was written: the last chunk brings it
        try:
            while not assembler.complete:
                while outstanding < self.fetch_window and next_index < ann.chunks:
                    self._send(WeightsRequest(ann.version, next_index))
                    next_index += 1
                    outstanding += 1
                msg = self._reply()
                outstanding -= 1
                if not isinstance(msg, WeightsChunk) or msg.version != ann.version:
                    continue
                if msg.missing:
                    # Superseded while we fetched: drop it and wait for the newer announcement.
                    self._drain_replies(outstanding)
                    self.metrics.weight_errors.inc()
                    self._pending = None
                    return
                if not 0 <= msg.index < ann.chunks:
                    raise WeightsError(f"chunk index {msg.index} outside 0..{ann.chunks - 1}")
                if msg.digest:
                    if digest and msg.digest != digest:
                        raise WeightsError("the last chunk's digest is not the announced one")
                    digest = msg.digest
                assembler.add(msg.index, msg.data)  # copied and hashed while more arrive
            if not digest:
                raise WeightsError("announced without a digest, and no chunk carried one")
            blob = assembler.finish(digest)
            self.backend.load_weights(blob, digest, ann.version)
            self._spare_blob = blob  # backends copy what they load and keep no reference
        except (LearnerGone, Stopping):
            raise
        except Exception as exc:  # a corrupt fetch must not kill the generator; count it
            self._drain_replies(outstanding)
            self.metrics.weight_errors.inc()
            logger.error("weights version %d rejected: %s", ann.version, exc)
            self._pending = None
            return
        self._loaded(ann, t, "in chunks")

    def _loaded(self, ann: WeightsAnnouncement, started: float, how: str) -> None:
        """The backend now holds `ann.version` (loaded `how`, since `started`)."""
        seconds = time.time() - started
        self._pending = None
        self.metrics.policy_version.set(ann.version)
        self.metrics.weight_load_seconds.observe(seconds)
        logger.info(
            "loaded weights version %d (%.1f MB) %s in %.2fs",
            ann.version,
            ann.size / 1e6,
            how,
            seconds,
        )

    def _send(self, msg: Message) -> None:
        self._send_on(self.control, msg, f"could not send {msg.TYPE}")

    def _send_on(self, sock: zmq.Socket, msg: Message, what: str) -> None:
        """Send once `sock` takes it, without ever blocking in the send itself: the learner
        can vanish between the poll that said writable and the send, and a blocking send
        would then wait out SNDTIMEO (PUSH: forever) instead of the shutdown grace."""
        start = time.time()
        while True:
            self._wait_writable(sock, what, start)
            try:
                send(sock, msg, flags=zmq.NOBLOCK)
                return
            except zmq.Again:
                time.sleep(0.05)  # the peer left after the poll: wait for writable again

    def _wait_writable(self, sock: zmq.Socket, what: str, start: float | None = None) -> None:
        """Wait until `sock` takes a message (a DEALER or PUSH with no learner connected
        does not): LearnerGone after `reconnect_seconds`, Stopping after a short grace once
        shutdown began, so SIGTERM is not held up by a learner that already exited."""
        start = time.time() if start is None else start
        while not sock.poll(200, zmq.POLLOUT):
            waited = time.time() - start
            if self.stop.is_set() and waited >= SHUTDOWN_GRACE_SECONDS:
                raise Stopping()
            if waited >= self.reconnect_seconds:
                raise LearnerGone(f"{what}: no learner connected")

    def _drain_replies(self, n: int) -> None:
        for _ in range(n):
            try:
                self._reply()
            except LearnerGone:
                return

    # ---------------------------------------------------------------- plumbing
    def _request(self, msg: Message) -> Message:
        self._send(msg)
        # Shutting down: no new work is wanted, so do not wait out a silent learner.
        return self._reply(lease=isinstance(msg, LeaseRequest), stoppable=True)

    def _reply(self, lease: bool = False, stoppable: bool = False) -> Message:
        """The next reply on the control socket. The reply to a prefetched lease request may
        arrive while we wait for another: it is kept aside and returned only to a caller that
        asks for a lease reply (`lease`), which skips anything else. `stoppable`: give up with
        Stopping once shutdown begins. LearnerGone after `reconnect_seconds` of silence."""
        deadline = time.time() + self.reconnect_seconds
        while True:
            if lease and self._early is not None:
                reply, self._early, self._prefetching = self._early, None, False
                return reply
            if not self.control.poll(200):
                if time.time() >= deadline:
                    raise LearnerGone(f"no reply within {self.reconnect_seconds}s")
                if stoppable and self.stop.is_set():
                    raise Stopping()
                continue
            _, reply = recv(self.control)
            deadline = time.time() + self.reconnect_seconds
            is_lease = isinstance(reply, (Lease, LeaseDenied))
            if is_lease and self._prefetching and self._early is None:
                self._early = reply
            elif lease and not is_lease:
                logger.debug("stray %s reply dropped while waiting for a lease", reply.TYPE)
            else:
                return reply

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
                if not sock.poll(200, zmq.POLLOUT):
                    continue  # the main loop notices the learner is gone and reconnects
                try:
                    send(sock, Heartbeat(self.generator_id, self.backend.version, held))
                except zmq.Again:
                    continue  # the main loop notices the learner is gone and reconnects
                if sock.poll(int(self.heartbeat_seconds * 1000)):
                    sock.recv_multipart()
        finally:
            sock.close(linger=0)


def _announcement(welcome: Welcome) -> WeightsAnnouncement:
    """The latest version a Welcome describes, as if it had been announced."""
    return WeightsAnnouncement(
        welcome.weights_version,
        welcome.weights_digest,
        welcome.weights_size,
        welcome.weights_chunks,
        welcome.weights_path,
    )


def _cat(arrays: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype)

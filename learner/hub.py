"""The hub on learner rank 0: leases, intake, buffer and weight serving over ZeroMQ.

One background thread owns the sockets (ZeroMQ sockets are not thread-safe) and runs the poll
loop: lease requests pass the staleness gate, returned groups are validated, rewarded,
filtered and buffered, weight chunks are served, silent generators lose their leases. The
training thread talks to the hub only through `wait_for_groups`, `advance_version` and
`publish`, all under one lock.

Fault tolerance is the point here, so this is where malformed input is caught: it is dropped,
counted by reason and logged at a bounded rate; it never reaches training or stops the loop.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field

import numpy as np
import zmq

from asyncrl.buffer.gate import StalenessGate
from asyncrl.buffer.leases import LeaseRecord, LeaseTable
from asyncrl.buffer.replay import BufferedGroup, Dropped, ReplayBuffer
from asyncrl.learner.data import Prompt, PromptSource
from asyncrl.learner.metrics import LearnerMetrics
from asyncrl.learner.rewards import has_variance, setup_reward
from asyncrl.learner.weights import PublishedWeights, WeightsStore
from asyncrl.protocol.codec import DecodeLimits, ProtocolError
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
    NcclPlan,
    NcclPull,
    RolloutGroup,
    WeightsAnnouncement,
    WeightsRequest,
    Welcome,
)
from asyncrl.protocol.sockets import SocketFactory, recv, send
from asyncrl.protocol.validate import RolloutLimits, validate_rollout

logger = logging.getLogger(__name__)


@dataclass
class GroupData:
    """A complete, rewarded group as the trainer needs it."""

    prompt: Prompt
    responses: list[np.ndarray]  # int32 token ids per sample
    logprobs: list[np.ndarray]  # float32 behaviour logprobs per sample
    versions: list[np.ndarray]  # int32 per-token weights versions
    rewards: np.ndarray  # float32 [G]
    finish_reasons: list[str]
    generator_id: str
    baseline_reward: float | None = None
    reward_metrics: dict = field(default_factory=dict)


@dataclass
class GeneratorInfo:
    generator_id: str
    backend: str
    version: int
    last_seen: float


class RateLimitedLog:
    """At most one log line per `interval` seconds per key; counts what it suppressed."""

    def __init__(self, interval: float = 5.0):
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -1e9) >= self.interval:
            n = self._suppressed.pop(key, 0)
            suffix = f" ({n} similar suppressed)" if n else ""
            logger.warning(msg + suffix, *args)
            self._last[key] = now
        else:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1


class Hub:
    """Rank 0's service thread plus the state the trainer consumes."""

    def __init__(
        self,
        cfg,
        prompts: PromptSource,
        tokenizer,
        metrics: LearnerMetrics,
        factory: SocketFactory | None = None,
    ):
        self.cfg = cfg
        self.prompts = prompts
        self.tokenizer = tokenizer
        self.reward_fn = setup_reward(cfg.reward)
        self.metrics = metrics
        self.factory = factory or SocketFactory()
        self.eos_id = tokenizer.eos_token_id
        self.limits = RolloutLimits(
            vocab_size=len(tokenizer), max_new_tokens=cfg.sampling.max_new_tokens
        )
        self.decode_limits = DecodeLimits()
        B = cfg.train.groups_per_step
        self.gate = StalenessGate(B, cfg.buffer.max_staleness)
        self.leases = LeaseTable()
        self.buffer = ReplayBuffer(
            cfg.buffer.max_groups,
            cfg.buffer.max_bytes,
            cfg.buffer.max_staleness,
            cfg.buffer.max_reuse,
        )
        self.weights = WeightsStore(cfg.learner.weight_chunk_bytes)
        self.reissue: deque[int] = deque()
        self.generators: dict[str, GeneratorInfo] = {}
        self.lease_generators: set[str] = set()  # generators that ever returned a group
        self.version = 0
        self.consumed = 0
        self.staleness_seen_max = 0
        self.staleness_counts: Counter[int] = Counter()
        # Per generator: (response tokens, seconds spent generating) of valid groups, for the
        # generation capacity that `asyncrl bench` compares the loop's throughput with.
        self.generation_work: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending_announcement: WeightsAnnouncement | None = None
        self._log = RateLimitedLog()
        self.metrics.max_staleness.set(cfg.buffer.max_staleness)
        self.endpoints: dict[str, str] = {}
        self.weights_path = ""
        self.nccl = None  # set by `attach_nccl` (nccl transport)

    def attach_nccl(self, publisher) -> None:
        """Offer the nccl transport: `publisher` answers NcclJoin / NcclPull and forgets
        silent generators' channels (the learner closes it after `stop`)."""
        self.nccl = publisher

    def spare_buffer(self) -> bytearray | None:
        return self.weights.spare()

    def stats(self) -> dict:
        """What the learner reports about intake and consumption."""
        with self._lock:
            return {
                "accepted": self.gate.accepted,
                "in_flight": self.gate.in_flight,
                "waiting": len(self.buffer),
                "consumed": self.consumed,
                "staleness_seen_max": self.staleness_seen_max,
                "staleness_counts": dict(self.staleness_counts),
                "generators_seen": sorted(self.lease_generators),
                "generation_capacity": self.generation_capacity(),
            }

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        lc = self.cfg.learner
        f = self.factory
        self.control = f.socket(zmq.ROUTER, server=True)
        self.rollouts = f.socket(zmq.PULL, server=True)
        self.pub = f.socket(zmq.PUB, server=True)
        host = lc.bind_host
        ports = []
        for sock, port in (
            (self.control, lc.control_port),
            (self.rollouts, lc.rollouts_port),
            (self.pub, lc.weights_port),
        ):
            if port == 0:
                ports.append(sock.bind_to_random_port(f"tcp://{host}"))
            else:
                sock.bind(f"tcp://{host}:{port}")
                ports.append(port)
        # Wakes the service loop when a version is announced, instead of at its next poll
        # timeout: a streamed version's chunks are asked for as soon as generators hear of it.
        self._wake_rx = f.context.socket(zmq.PULL)
        self._wake_rx.bind(f"inproc://asyncrl-hub-wake-{id(self)}")
        self._wake_tx = f.context.socket(zmq.PUSH)
        self._wake_tx.connect(f"inproc://asyncrl-hub-wake-{id(self)}")
        self.ports = dict(zip(("control", "rollouts", "weights"), ports))
        shown = host if host not in ("0.0.0.0", "*") else socket.gethostname()
        self.endpoints = {k: f"tcp://{shown}:{p}" for k, p in self.ports.items()}
        self._thread = threading.Thread(target=self._run, name="hub", daemon=True)
        self._thread.start()
        logger.info("hub listening: %s", self.endpoints)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for s in (self.control, self.rollouts, self.pub, self._wake_rx, self._wake_tx):
            s.close(linger=0)
        self.reward_fn.close()

    # ---------------------------------------------------------------- trainer API
    def wait_for_groups(self, n: int, stop: threading.Event) -> list[BufferedGroup] | None:
        """Block until `n` trainable groups exist at the current version; take them."""
        with self._lock:
            while not stop.is_set():
                taken, dropped = self.buffer.sample(n, self.version)
                self._account_dropped(dropped)
                if taken is not None:
                    for g in taken:
                        s = self.version - g.version
                        self.metrics.staleness.observe(s)
                        self.staleness_seen_max = max(self.staleness_seen_max, s)
                        self.staleness_counts[s] += 1
                    self.consumed += sum(1 for g in taken if g.uses == 1)
                    self._update_gauges()
                    return taken
                self._lock.wait(timeout=0.2)
        return None

    def generation_capacity(self) -> float:
        """Response tokens per second the generators produce while generating (not while
        waiting on the gate), summed over generators: the loop's generation-only rate."""
        with self._lock:
            return sum(t / s for t, s in self.generation_work.values() if s > 0)

    def advance_version(self, version: int) -> None:
        with self._lock:
            self.version = version
            self.metrics.policy_version.set(version)
            self._lock.notify_all()

    def publish(self, version: int, blob: bytes, path: str = "") -> None:
        """Announce a finished version (`path`: where the disk transport wrote it)."""
        pub = self.weights.put(version, blob)
        self.weights_path = path
        self.metrics.weight_bytes.inc(len(blob))
        self._announce(
            WeightsAnnouncement(pub.version, pub.digest, len(pub.blob), pub.chunks, path)
        )

    def begin_publish(self, version: int, writer) -> PublishedWeights:
        """Announce a version as `writer` starts writing it (no digest yet): generators
        between groups fetch chunks as they are written. `finish_publish` once
        `writer.finish()` ran announces it again, complete."""
        pub = self.weights.begin(version, writer)
        self.weights_path = ""
        self._announce(WeightsAnnouncement(pub.version, "", len(pub.blob), pub.chunks))
        return pub

    def finish_publish(self, pub: PublishedWeights) -> None:
        self.weights.complete(pub)
        self.metrics.weight_bytes.inc(len(pub.blob))
        # Wakes the loop for the last chunk, which waited for the digest. Generators that
        # load in the middle of a generation wait for this announcement: they would rather
        # keep decoding than stall while the learner is still writing.
        self._announce(WeightsAnnouncement(pub.version, pub.digest, len(pub.blob), pub.chunks))

    def _announce(self, ann: WeightsAnnouncement) -> None:
        # The hub thread owns the PUB socket: hand the announcement over.
        with self._lock:
            self._pending_announcement = ann
        self._wake()

    def _wake(self) -> None:
        with self._lock:  # sockets are not thread-safe; publishers may be several threads
            try:
                self._wake_tx.send(b"", zmq.NOBLOCK)
            except zmq.Again:
                pass  # a thousand wake-ups are already queued

    def state_dict(self) -> dict:
        """What a checkpoint needs to resume without losing or repeating work: gate counters,
        lease ids, the prompt cursor, prompts to re-issue, and the waiting groups (spilled)."""
        with self._lock:
            return {
                "gate": self.gate.state_dict(),
                "consumed": self.consumed,
                "next_lease_id": self.leases.next_id,
                "prompts": self.prompts.state_dict(),
                # Open leases die with the process: their prompts go out again after resume.
                "reissue": list(self.reissue) + [r.prompt_index for r in self.leases.open.values()],
                "waiting": [_spill(g) for g in self.buffer.groups()],
            }

    def load_state_dict(self, state: dict) -> None:
        with self._lock:
            self.consumed = int(state["consumed"])
            self.leases.next_id = int(state["next_lease_id"])
            self.prompts.load_state_dict(state["prompts"])
            self.reissue = deque(int(i) for i in state["reissue"])
            for item in state.get("waiting", []):
                self.buffer.add(_unspill(item, self.prompts))
            self.gate.load_state_dict(state["gate"], len(self.buffer), self.consumed)
            self._update_gauges()

    def healthy(self) -> tuple[bool, str]:
        if self._thread is None or not self._thread.is_alive():
            return False, "hub thread not running"
        return True, f"ok version={self.version} generators={len(self.generators)}"

    # ---------------------------------------------------------------- service loop
    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        poller.register(self.rollouts, zmq.POLLIN)
        poller.register(self._wake_rx, zmq.POLLIN)
        next_housekeeping = 0.0
        while not self._stop.is_set():
            # Held chunk requests are answered within a millisecond of their chunk's writing
            # (about the time a 4 MiB chunk takes to copy).
            events = dict(poller.poll(1 if self.weights.deferred else 50))
            if self._wake_rx in events:
                while self._wake_rx.poll(0):
                    self._wake_rx.recv()
            if self.control in events:
                for _ in range(256):
                    if not self._handle_control():
                        break
            if self.weights.deferred:
                self.metrics.weight_bytes_served.inc(self.weights.serve_deferred(self.control))
            if self.rollouts in events:
                for _ in range(64):
                    if not self._handle_rollout():
                        break
            now = time.time()
            with self._lock:
                ann, self._pending_announcement = self._pending_announcement, None
            if ann is not None:
                send(self.pub, ann)
            if now >= next_housekeeping:
                self._housekeeping(now)
                next_housekeeping = now + min(0.25, self.cfg.buffer.heartbeat_seconds / 4)

    def _recv(self, sock, routed: bool):
        try:
            return recv(sock, self.decode_limits, routed=routed, flags=zmq.NOBLOCK)
        except zmq.Again:
            return None
        except ProtocolError as exc:
            self.metrics.malformed.labels(reason=exc.reason).inc()
            self._log.warning("malformed", "dropped malformed message: %s", exc)
            return False

    def _handle_control(self) -> bool:
        got = self._recv(self.control, routed=True)
        if got is None:
            return False
        if got is False:
            return True
        prefix, msg = got
        if isinstance(msg, WeightsRequest):
            # The store has its own lock: chunks are served without taking the hub's.
            self.metrics.weight_bytes_served.inc(self.weights.serve(self.control, prefix, msg))
            return True
        if isinstance(msg, (NcclJoin, NcclPull)):
            send(self.control, self._on_nccl(msg), prefix=prefix)
            return True
        now = time.time()
        with self._lock:
            if isinstance(msg, LeaseRequest):
                reply = self._on_lease_request(msg, now)
            elif isinstance(msg, Heartbeat):
                self._touch(msg.generator_id, None, msg.version, now)
                self.leases.extend(
                    msg.generator_id,
                    [int(x) for x in msg.lease_ids],
                    now,
                    self.cfg.buffer.lease_seconds,
                )
                reply = Ack(self.version)
            elif isinstance(msg, Hello):
                reply = self._on_hello(msg, now)
            elif isinstance(msg, LeaseReturn):
                for lid in msg.lease_ids:
                    rec = self.leases.give_back(int(lid), msg.generator_id)
                    if rec is not None:
                        self._release(rec)
                reply = Ack(self.version)
            else:
                self.metrics.malformed.labels(reason="unexpected_type").inc()
                self._log.warning("unexpected", "unexpected %s on control socket", msg.TYPE)
                return True
        send(self.control, reply, prefix=prefix)
        return True

    def _on_hello(self, msg: Hello, now: float) -> Welcome:
        # Generators also say hello to re-sync a missed weights announcement; only a new
        # (or previously expired) generator is news.
        known = msg.generator_id in self.generators
        self._touch(msg.generator_id, msg.backend, msg.version, now)
        (logger.debug if known else logger.info)(
            "generator %s %s (backend %s, version %d)",
            msg.generator_id,
            "re-synced" if known else "joined",
            msg.backend,
            msg.version,
        )
        pub = self.weights.latest
        return Welcome(
            learner_version=self.version,
            weights_version=pub.version if pub else -1,
            weights_digest=pub.digest if pub else "",
            weights_size=len(pub.blob) if pub else 0,
            weights_chunks=pub.chunks if pub else 0,
            heartbeat_seconds=float(self.cfg.buffer.heartbeat_seconds),
            vocab_size=self.limits.vocab_size,
            rollouts_port=self.ports["rollouts"],
            weights_port=self.ports["weights"],
            weights_path=self.weights_path if pub else "",
            lease_seconds=float(self.cfg.buffer.lease_seconds),
            nccl=self.nccl is not None,
        )

    def _on_nccl(self, msg: NcclJoin | NcclPull) -> NcclGroup | NcclPlan:
        if self.nccl is None:
            why = "learner.weights.type is not nccl"
            if isinstance(msg, NcclJoin):
                return NcclGroup("", 0, "", "", error=why)
            return NcclPlan(msg.version, "", missing=True, reason=why)
        return self.nccl.join(msg) if isinstance(msg, NcclJoin) else self.nccl.pull(msg)

    def _touch(self, gid: str, backend: str | None, version: int, now: float) -> None:
        info = self.generators.get(gid)
        if info is None:
            info = self.generators[gid] = GeneratorInfo(gid, backend or "?", version, now)
        info.last_seen = now
        info.version = version
        if backend:
            info.backend = backend

    def _on_lease_request(self, msg: LeaseRequest, now: float):
        self._touch(msg.generator_id, None, msg.version, now)
        version = msg.version
        # A generator without learner weights (-1), or holding weights from the future (the
        # learner resumed from an older checkpoint), must load the current weights first.
        if version < 0 or version > self.version or not self.gate.can_issue(version):
            reason = "gate" if 0 <= version <= self.version else "version"
            self.metrics.leases_denied.labels(reason=reason).inc()
            return LeaseDenied(reason, 0.5, self.version)
        index = self.reissue.popleft() if self.reissue else self.prompts.next().index
        prompt = self.prompts.prompts[index]
        s = self.cfg.sampling
        rec = self.leases.issue(
            index, msg.generator_id, version, now, self.cfg.buffer.lease_seconds, s.group_size
        )
        self.gate.on_issue()
        self.metrics.leases_issued.inc()
        self.metrics.leases_in_flight.set(self.gate.in_flight)
        return Lease(
            lease_id=rec.lease_id,
            prompt_ids=prompt.token_ids,
            group_size=s.group_size,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            max_new_tokens=s.max_new_tokens,
            deadline=rec.deadline,
            issued_version=version,
            greedy_baseline=self.cfg.advantage.name == "remax",
            stop=list(s.stop),
        )

    def _handle_rollout(self) -> bool:
        got = self._recv(self.rollouts, routed=False)
        if got is None:
            return False
        if got is False:
            return True
        _, msg = got
        self.metrics.received.inc()
        if not isinstance(msg, RolloutGroup):
            self.metrics.malformed.labels(reason="unexpected_type").inc()
            return True
        with self._lock:
            rec = self.leases.open.get(msg.lease_id)
            if rec is not None and rec.generator_id != msg.generator_id:
                # Someone else's lease id: drop it without disturbing the real holder's lease.
                self._drop("invalid", f"lease {msg.lease_id} belongs to {rec.generator_id}")
                return True
            rec, why = self.leases.complete(msg.lease_id)
            if rec is None:
                self._drop(why, f"lease {msg.lease_id} from {msg.generator_id} is {why}")
                return True
            try:
                validate_rollout(msg, self.limits, rec.group_size, self.version)
            except ProtocolError as exc:
                self._release(rec)
                self._drop("invalid", f"group from {msg.generator_id}: {exc}")
                return True
            self._touch(msg.generator_id, None, int(msg.versions.max(initial=0)), time.time())
            work = self.generation_work[msg.generator_id]
            work[0] += float(msg.lengths.sum())
            work[1] += float(msg.generate_seconds)
        # Rewards run outside the lock: they may be slow and the trainer must not wait on them.
        try:
            data = self._score(msg, rec)
        except Exception as exc:
            # A reward that fails on one group (a plug-in bug, a row without the answer field)
            # must not end intake for everyone: drop the group and count it.
            with self._lock:
                self.metrics.reward_errors.inc()
                self.gate.on_lease_closed()
                self._drop("invalid", f"reward failed on a group from {msg.generator_id}: {exc}")
                self._lock.notify_all()
            return True
        with self._lock:
            if self.cfg.buffer.filter_zero_variance and not has_variance(list(data.rewards)):
                self.gate.on_lease_closed()
                self._drop("filtered", "")
                return True
            nbytes = sum(a.nbytes for a in data.responses) * 3 + data.prompt.token_ids.nbytes
            group = BufferedGroup(msg.lease_id, rec.prompt_index, msg.version, nbytes, data)
            self.gate.on_accept()
            self.lease_generators.add(msg.generator_id)
            self._account_dropped(self.buffer.add(group))
            self._update_gauges()
            self._lock.notify_all()
        return True

    def _score(self, msg: RolloutGroup, rec: LeaseRecord) -> GroupData:
        prompt = self.prompts.prompts[rec.prompt_index]
        slices = msg.sample_slices()
        responses = [np.array(msg.tokens[s]) for s in slices]
        texts = [self._decode(r) for r in responses]
        lengths = [int(x) for x in msg.lengths]
        result = self.reward_fn(prompt.text, texts, prompt.row, lengths)
        baseline = None
        if msg.baseline_tokens is not None:
            b = np.array(msg.baseline_tokens)
            baseline = float(
                self.reward_fn(prompt.text, [self._decode(b)], prompt.row, [len(b)]).rewards[0]
            )
        return GroupData(
            prompt=prompt,
            responses=responses,
            logprobs=[np.array(msg.logprobs[s]) for s in slices],
            versions=[np.array(msg.versions[s]) for s in slices],
            rewards=np.asarray(result.rewards, dtype=np.float32),
            finish_reasons=list(msg.finish_reasons),
            generator_id=msg.generator_id,
            baseline_reward=baseline,
            reward_metrics=dict(result.metrics),
        )

    def _decode(self, ids: np.ndarray) -> str:
        ids = ids.tolist()
        if self.eos_id is not None and self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ---------------------------------------------------------------- bookkeeping
    def _release(self, rec: LeaseRecord) -> None:
        """A lease ended without a group: free gate capacity, send the prompt out again."""
        self.gate.on_lease_closed()
        self.reissue.append(rec.prompt_index)

    def _drop(self, reason: str, detail: str) -> None:
        self.metrics.dropped.labels(reason=reason).inc()
        if detail:
            self._log.warning(reason, "dropped rollout (%s): %s", reason, detail)

    def _account_dropped(self, dropped: list[Dropped]) -> None:
        for d in dropped:
            # A reused group was already consumed once; only never-trained ones free capacity.
            if d.group.uses == 0:
                self.gate.on_discard()
            self._drop(d.reason, "")

    def _housekeeping(self, now: float) -> None:
        with self._lock:
            for rec in self.leases.expire_due(now):
                self.metrics.leases_expired.inc()
                self._release(rec)
            silent = [
                g
                for g in self.generators.values()
                if now - g.last_seen > 2 * self.cfg.buffer.heartbeat_seconds
            ]
            for g in silent:
                recs = self.leases.reclaim_generator(g.generator_id)
                for rec in recs:
                    self.metrics.leases_expired.inc()
                    self._release(rec)
                del self.generators[g.generator_id]
                if self.nccl is not None:
                    self.nccl.forget(g.generator_id)
                logger.warning(
                    "generator %s went silent; reclaimed %d leases", g.generator_id, len(recs)
                )
            self._update_gauges()

    def _update_gauges(self) -> None:
        m = self.metrics
        m.buffer_groups.set(len(self.buffer))
        m.buffer_bytes.set(self.buffer.nbytes)
        m.leases_in_flight.set(self.gate.in_flight)
        m.generators_connected.set(len(self.generators))
        latest = self.weights.latest.version if self.weights.latest else -1
        m.generators_up_to_date.set(sum(1 for g in self.generators.values() if g.version >= latest))


def _spill(g: BufferedGroup) -> dict:
    d: GroupData = g.payload
    return {
        "lease_id": g.lease_id,
        "prompt_index": g.prompt_index,
        "version": g.version,
        "nbytes": g.nbytes,
        "uses": g.uses,
        "responses": [a.tolist() for a in d.responses],
        "logprobs": [a.tolist() for a in d.logprobs],
        "versions": [a.tolist() for a in d.versions],
        "rewards": d.rewards.tolist(),
        "finish_reasons": d.finish_reasons,
        "generator_id": d.generator_id,
        "baseline_reward": d.baseline_reward,
        "reward_metrics": d.reward_metrics,
    }


def _unspill(item: dict, prompts: PromptSource) -> BufferedGroup:
    data = GroupData(
        prompt=prompts.prompts[item["prompt_index"]],
        responses=[np.asarray(a, np.int32) for a in item["responses"]],
        logprobs=[np.asarray(a, np.float32) for a in item["logprobs"]],
        versions=[np.asarray(a, np.int32) for a in item["versions"]],
        rewards=np.asarray(item["rewards"], np.float32),
        finish_reasons=list(item["finish_reasons"]),
        generator_id=item["generator_id"],
        baseline_reward=item["baseline_reward"],
        reward_metrics=dict(item["reward_metrics"]),
    )
    return BufferedGroup(
        item["lease_id"],
        item["prompt_index"],
        item["version"],
        item["nbytes"],
        data,
        uses=item["uses"],
    )


def default_generator_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"

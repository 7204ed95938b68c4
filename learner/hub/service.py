"""The hub on learner rank 0, composed of its parts: the socket loop (`loop`), intake with the
reward pool (`intake`), weight serving (`serving`), generator housekeeping (`generators`),
all sharing the ledger under one lock (`core`).

The training thread talks to the hub only through the methods below; handlers of control
messages (hello, lease requests, heartbeats, lease returns) are here too, each a call into
the ledger.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from asyncrl.buffer.ledger import Denied
from asyncrl.buffer.replay import BufferedGroup
from asyncrl.learner.config import RunConfig
from asyncrl.learner.data import PromptSource
from asyncrl.learner.hub.core import HubCore, logger
from asyncrl.learner.hub.generators import Generators
from asyncrl.learner.hub.groups import spill, unspill
from asyncrl.learner.hub.health import HealthWatch
from asyncrl.learner.hub.intake import Intake
from asyncrl.learner.hub.loop import SocketLoop
from asyncrl.learner.hub.peers import Peer, Peers, Sender
from asyncrl.learner.hub.serving import NcclService, WeightServing
from asyncrl.learner.hub.tuning import Tuning
from asyncrl.learner.metrics import LearnerMetrics
from asyncrl.learner.rewards.pool import RewardPool
from asyncrl.learner.weights import PublishedWeights, WeightsStore
from asyncrl.protocol.messages import (
    Ack,
    Heartbeat,
    Hello,
    Lease,
    LeaseDenied,
    LeaseRequest,
    LeaseReturn,
    Welcome,
)
from asyncrl.protocol.sockets import SocketFactory


class HubStopped(RuntimeError):
    """The hub's socket loop died: no group can arrive, so the run cannot go on."""


class RewardFailing(RuntimeError):
    """`reward.max_consecutive_failures` groups in a row failed in the reward: a broken reward
    or a wrong answer column would otherwise drop every group forever."""


class Hub:
    """Rank 0's service threads plus the state the trainer consumes."""

    def __init__(
        self,
        cfg: RunConfig,
        prompts: PromptSource,
        tokenizer,
        metrics: LearnerMetrics,
        factory: SocketFactory | None = None,
        operators: frozenset[str] = frozenset(),
    ):
        """`operators`: the CURVE public keys that may tune the live run (`asyncrl ctl`)."""
        self.cfg = cfg
        self.prompts = prompts
        self.metrics = metrics
        self.core = core = HubCore(cfg, metrics)
        self.pool = RewardPool(cfg.reward)
        # Who said hello: leases are bound to those connections, only they get weights.
        self.peers = Peers(on_evict=core.evicted)
        self.serving = WeightServing(
            cfg.learner.weight_chunk_bytes, metrics, self._wake, self.peers.admitted
        )
        self.generators = Generators(core, self._forget_generator)
        self.intake = Intake(core, prompts, tokenizer, self.pool, self.generators, self._accepted)
        self.tuning = Tuning(core, operators)
        self.loop = SocketLoop(
            factory or SocketFactory(),
            metrics,
            core.log,
            self.serving,
            on_control=self._on_control,
            on_rollout=lambda msg, key: self.intake.on_rollout(msg, key, time.time()),
            rollouts_open=lambda: not self.pool.saturated(),
            housekeeping=self._housekeeping,
            housekeeping_every=min(0.25, cfg.buffer.heartbeat_seconds / 4),
            on_tune=self.tuning.handle,
        )
        self.staleness_seen_max = 0
        self.audit = None  # learner.audit.AuditLog when learner.audit_log is on
        self.staleness_counts: Counter[int] = Counter()

    # ---------------------------------------------------------------- lifecycle
    @property
    def endpoints(self) -> dict[str, str]:
        return self.loop.endpoints

    @property
    def weights(self) -> WeightsStore:
        return self.serving.store

    def attach_nccl(self, publisher: NcclService) -> None:
        """Offer the nccl transport through `publisher` (built on the trainer's side)."""
        self.serving.nccl = publisher

    def start(self) -> None:
        """Start the reward workers (a reward that cannot be built fails here), then serve."""
        self.pool.start()
        lc = self.cfg.learner
        self.loop.bind(lc.bind_host, lc.control_port, lc.rollouts_port, lc.weights_port)
        self.loop.start()
        logger.info("hub listening: %s", self.endpoints)

    def stop(self) -> None:
        self.loop.stop()
        self.pool.close()
        self.serving.close()

    def healthy(self) -> tuple[bool, str]:
        """For /healthz: the socket loop runs, intake and the step loop make progress
        (`health.HealthWatch`, created at the first look)."""
        if not self.loop.alive():
            return False, f"hub thread not running: {self.loop.failure or 'stopped'}"
        with self.core.lock:
            watch = self.__dict__.get("_health_watch")
            if watch is None:
                watch = self._health_watch = HealthWatch(self.cfg.learner.health_stall_seconds)
            n, led = len(self.generators.connected), self.core.ledger
            ok, why = watch.check(
                time.monotonic(),
                connected=n,
                accepted=led.accepted,
                consumed=led.consumed,
                waiting=led.waiting,
                batch=self.cfg.train.groups_per_step,
            )
            return ok, why or f"ok version={self.core.version} generators={n}"

    # ---------------------------------------------------------------- trainer API
    def wait_for_groups(self, n: int, stop: threading.Event) -> list[BufferedGroup] | None:
        """Block until `n` trainable groups exist at the current version; take them."""
        core = self.core
        with core.lock:
            while not stop.is_set():
                if not self.loop.alive():
                    # Nothing can arrive any more: end the run (non-zero) so a supervisor
                    # restarts it with --resume, rather than waiting forever.
                    raise HubStopped(self.loop.failure or "the hub thread is not running")
                failing = self.intake.failing()
                if failing:
                    raise RewardFailing(failing)
                taken, dropped = core.ledger.on_groups_taken(n, core.version)
                core.drop_all(dropped)
                if taken is not None:
                    for g in taken:
                        s = core.version - g.version
                        self.metrics.staleness.observe(s)
                        self.staleness_seen_max = max(self.staleness_seen_max, s)
                        self.staleness_counts[s] += 1
                    self._update_gauges()
                    return taken
                core.lock.wait(timeout=0.2)
        return None

    def advance_version(self, version: int) -> None:
        with self.core.lock:
            self.core.version = version
            self.metrics.policy_version.set(version)
            self.core.lock.notify_all()

    def publish(self, version: int, blob: bytes, path: str = "") -> None:
        self.serving.publish(version, blob, path)

    def begin_publish(self, version: int, writer) -> PublishedWeights:
        return self.serving.begin_publish(version, writer)

    def finish_publish(self, pub: PublishedWeights) -> None:
        self.serving.finish_publish(pub)

    def spare_buffer(self) -> bytearray | None:
        """A retired version's buffer to write the next one into (or None)."""
        return self.serving.store.spare()

    def stats(self) -> dict:
        """Counters for the trainer's log lines and summary."""
        with self.core.lock:
            led = self.core.ledger
            return {
                "accepted": led.accepted,
                "in_flight": led.in_flight,
                "waiting": led.waiting,
                "consumed": led.consumed,
                "staleness_seen_max": self.staleness_seen_max,
                "staleness_counts": dict(sorted(self.staleness_counts.items())),
                "generators_seen": sorted(self.generators.seen),
                "generation_capacity": self.generators.capacity(),
                "hub_cpu_seconds": self.loop.cpu_seconds,
                "first_generator_joined_at": self.generators.first_joined,
            }

    def state_dict(self) -> dict:
        """What a checkpoint needs to resume without losing or repeating work: the ledger's
        counters and prompts to re-issue, the waiting groups (spilled), and the
        prompt cursor."""
        with self.core.lock:
            if self.audit is not None:
                # The moment this checkpoint's state is taken; intake goes on meanwhile.
                self.audit.snapshot(self.core.version)
            return {
                **self.core.ledger.state_dict(spill),
                "prompts": self.prompts.state_dict(),
                "tuning": self.tuning.state_dict(),
            }

    # ---------------------------------------------------------------- audit (optional)
    def attach_audit(self, audit) -> None:
        """Report every group's fate to `audit` (a `learner.audit.AuditLog`) from now on."""
        with self.core.lock:
            self.audit = audit
            self.core.ledger.journal = audit

    def on_checkpoint_saved(self, version: int) -> None:
        """Checkpoint `version` is complete on disk."""
        if self.audit is not None:
            with self.core.lock:
                self.audit.checkpoint(version)

    def close_audit(self, finished: bool) -> None:
        """End the audit; after a normal finish, record which groups are still waiting."""
        if self.audit is None:
            return
        with self.core.lock:
            if finished:
                self.audit.finished([g.lease_id for g in self.core.ledger.buffer.groups()])
            self.core.ledger.journal = None
            self.audit.close()
            self.audit = None

    def load_state_dict(self, state: dict) -> None:
        with self.core.lock:
            self.prompts.load_state_dict(state["prompts"])
            self.core.ledger.load_state_dict(state, lambda item: unspill(item, self.prompts))
            self.tuning.load_state_dict(state.get("tuning"))  # older checkpoints have none
            self._update_gauges()

    # ---------------------------------------------------------------- control handlers
    def _on_control(self, msg, now: float, sender: Sender):
        with self.core.lock:
            if isinstance(msg, LeaseRequest):
                return self._on_lease_request(msg, now, sender)
            if isinstance(msg, Heartbeat):
                return self._on_heartbeat(msg, now, sender)
            if isinstance(msg, Hello):
                refused = self.tuning.refuse_hello(msg, sender)  # an operator's key
                return refused or self._on_hello(msg, now, sender)
            if isinstance(msg, LeaseReturn):
                peer = self._peer(sender, msg.generator_id, "lease_return", len(msg.lease_ids))
                if peer is not None:
                    refused = self.core.ledger.on_leases_returned(peer.holder, msg.lease_ids)
                    self._refused("lease_return", refused)
                return Ack(self.core.version)
        self.metrics.malformed.labels(reason="unexpected_type").inc()
        self.core.log.warning("unexpected", "unexpected %s on control socket", msg.TYPE)
        return None

    def _peer(self, sender: Sender, generator_id: str, message: str, n: int = 1) -> Peer | None:
        """The session of `sender` if it said hello as `generator_id`; else counted (`n` per
        lease id the message names) as refused for `no_hello`."""
        peer = self.peers.get(sender)
        if peer is not None and peer.generator_id == generator_id:
            return peer
        self.metrics.lease_messages_refused.labels(message=message, reason="no_hello").inc(n)
        self.core.log.warning(
            "no_hello",
            "%s refused: the connection did not say hello as %r",
            message,
            generator_id[:64],
        )
        return None

    def _refused(self, message: str, refused) -> None:
        for reason, n in refused.items():
            self.metrics.lease_messages_refused.labels(message=message, reason=reason).inc(n)
            self.core.log.warning(reason, "%s: %d lease ids refused (%s)", message, n, reason)

    def _on_heartbeat(self, msg: Heartbeat, now: float, sender: Sender) -> Ack:
        # The heartbeat thread has a socket of its own: it names its session by token. Over
        # the session's own connection no token is needed.
        peer = self.peers.by_token(msg.session, msg.generator_id, sender.key)
        if peer is None:
            peer = self._peer(sender, msg.generator_id, "heartbeat", max(1, len(msg.lease_ids)))
        if peer is not None:
            self.generators.touch(msg.generator_id, None, msg.version, now)
            refused = self.core.ledger.on_leases_extended(peer.holder, msg.lease_ids, now)
            self._refused("heartbeat", refused)
        return Ack(self.core.version)

    def _on_hello(self, msg: Hello, now: float, sender: Sender) -> Welcome:
        peer, moved_from = self.peers.hello(sender, msg.generator_id, msg.session)
        if moved_from is not None:
            n = self.core.ledger.on_holder_moved(moved_from, peer.holder)
            self.core.log.info(
                "reconnected",
                "generator %r reconnected; %d open leases follow it",
                msg.generator_id[:64],
                n,
            )
        # Generators also say hello to re-sync a missed weights announcement; only a new
        # (or previously expired) generator is news.
        joined = self.generators.touch(msg.generator_id, msg.backend, msg.version, now)
        # Rate-limited: a peer making up a new id per hello would otherwise flood the log.
        if joined:
            self.core.log.info(
                "joined",
                "generator %r joined (backend %r, version %d)",
                msg.generator_id[:64],
                msg.backend[:32],
                msg.version,
            )
        pub = self.serving.store.latest
        b = self.cfg.buffer
        return Welcome(
            learner_version=self.core.version,
            weights_version=pub.version if pub else -1,
            weights_digest=pub.digest if pub else "",
            weights_size=len(pub.blob) if pub else 0,
            weights_chunks=pub.chunks if pub else 0,
            heartbeat_seconds=float(b.heartbeat_seconds),
            vocab_size=self.intake.limits.vocab_size,
            rollouts_port=self.loop.ports["rollouts"],
            weights_port=self.loop.ports["weights"],
            weights_path=self.serving.path if pub else "",
            lease_seconds=float(b.lease_seconds),
            nccl=self.serving.nccl is not None,
            session=peer.token,
        )

    def _on_lease_request(
        self, msg: LeaseRequest, now: float, sender: Sender
    ) -> Lease | LeaseDenied:
        peer = self._peer(sender, msg.generator_id, "lease_request")
        if peer is None:
            # A lease is bound to the connection that receives it: say hello first (a
            # generator whose learner restarted under a live connection does so on this).
            self.metrics.leases_denied.labels(reason="hello").inc()
            return LeaseDenied("hello", 0.5, self.core.version)
        self.generators.touch(msg.generator_id, None, msg.version, now)
        got = self.core.ledger.on_lease_requested(
            peer.holder, msg.version, self.core.version, now, lambda: self.prompts.next().index
        )
        if isinstance(got, Denied):
            self.metrics.leases_denied.labels(reason=got.reason).inc()
            retry = self.intake.gate_retry_after() if got.reason == "gate" else 0.5
            return LeaseDenied(got.reason, retry, self.core.version)
        self.metrics.leases_issued.inc()
        self.metrics.leases_in_flight.set(self.core.ledger.in_flight)
        s = self.cfg.sampling
        return Lease(
            lease_id=got.lease_id,
            prompt_ids=self.prompts.prompts[got.prompt_index].token_ids,
            group_size=got.group_size,  # the ledger's: N samples when TTRL votes over N
            sampling=s,  # the codec sends SamplingParams' fields of the section
            deadline=got.deadline,
            issued_version=msg.version,
            greedy_baseline=self.cfg.advantage.name == "remax",
        )

    # ---------------------------------------------------------------- housekeeping
    def _housekeeping(self, now: float) -> None:
        with self.core.lock:
            expired = self.core.ledger.on_leases_expired(now)
            self.metrics.leases_expired.inc(len(expired))
            if self.loop.finished is None:
                # After the finish generators leave because they were told to: not news.
                self.generators.reclaim_silent(now)
            self._update_gauges()

    def _forget_generator(self, generator_id: str) -> None:
        """A generator went silent: its sessions end and the nccl publisher drops its group."""
        self.peers.forget_generator(generator_id)
        self.serving.forget(generator_id)

    def _accepted(self) -> None:
        self._update_gauges()
        self.core.lock.notify_all()

    def _wake(self) -> None:
        self.loop.wake()

    def _update_gauges(self) -> None:
        m, led = self.metrics, self.core.ledger
        m.buffer_groups.set(led.waiting)
        m.buffer_bytes.set(led.waiting_bytes)
        m.leases_in_flight.set(led.in_flight)
        m.generators_connected.set(len(self.generators.connected))
        latest = self.serving.store.latest
        m.generators_up_to_date.set(self.generators.up_to_date(latest.version if latest else -1))

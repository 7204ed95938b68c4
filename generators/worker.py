"""The generate loop: lease a prompt group, generate it, push it, keep weights fresh.

One process drives one backend. The session with the learner (`session.py`) is rebuilt with
backoff whenever the learner goes silent, so a learner restart needs nothing from the
operator; weights come through `updates.py`. On stop the current group is finished and
pushed, a prefetched lease is handed back, then `run` returns; it also returns, with
`finished` set, once the learner announces that its run finished. What the learner sends is
checked against this generator's limits first (`bounds.py`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from asyncrl.generators.backends.base import Backend, InflightMode
from asyncrl.generators.bounds import LearnerBounds
from asyncrl.generators.config import LearnerLimits
from asyncrl.generators.envs.episode import EpisodeRunner
from asyncrl.generators.metrics import GeneratorMetrics
from asyncrl.generators.phases import PhaseTimes
from asyncrl.generators.session import LearnerGone, RunFinished, Session, Stopping
from asyncrl.generators.updates import WeightUpdates
from asyncrl.generators.weights import FETCH_WINDOW
from asyncrl.protocol.messages import Lease, LeaseDenied, RolloutGroup, Welcome
from asyncrl.protocol.sockets import SocketFactory

logger = logging.getLogger(__name__)

EpisodeFactory = Callable[[Backend, Callable[[], None] | None, GeneratorMetrics], EpisodeRunner]

# How often the generator logs what it did (at INFO); each weight load is logged at DEBUG.
SUMMARY_SECONDS = 30.0


class GeneratorWorker:
    """Runs until `stop` is set; survives learner restarts."""

    def __init__(
        self,
        backend: Backend,
        generator_id: str,
        learner: str,
        metrics: GeneratorMetrics,
        factory: SocketFactory | None = None,
        reconnect_seconds: float = 10.0,
        fetch_window: int = FETCH_WINDOW,
        inflight_updates: InflightMode | Literal["off"] = "off",
        inflight_check_tokens: int = 8,
        prefetch_lease: bool = True,
        groups_per_batch: int = 1,
        stop: threading.Event | None = None,
        limits: LearnerLimits | None = None,
        weights_dir: str = "",
        episodes: EpisodeFactory | None = None,
    ):
        """`episodes`: multi-turn rollouts (an environment between model turns); given the
        backend, the hook that loads weights between turns (None: not between turns) and
        the metrics, it returns the runner that plays a lease's episodes."""
        self.backend = backend
        self.bounds = LearnerBounds(limits or LearnerLimits(), metrics, weights_dir)
        self.finished: int | None = None  # the version the learner finished at, once told
        self.metrics = metrics
        self.prefetch_lease = prefetch_lease
        # Leases generated together (in one batch where the backend can): the engine's batch
        # holds that many groups instead of one.
        self.groups_per_batch = groups_per_batch
        self.stop = stop if stop is not None else threading.Event()
        self.session = Session(
            backend,
            generator_id,
            learner,
            factory or SocketFactory(),
            reconnect_seconds,
            self.stop,
            reject=self.bounds.reject,
        )
        self.weights = WeightUpdates(backend, self.session, metrics, fetch_window, self.bounds)
        self._last_generate = 0.0
        self._activity = Activity()
        self.phases = PhaseTimes(metrics.phase_seconds)
        if inflight_updates != "off" and backend.capabilities.inflight_loads:
            backend.set_inflight_hook(
                self.weights.between_tokens, inflight_updates, inflight_check_tokens
            )
        self.episodes: EpisodeRunner | None = None
        if episodes is not None:
            if not backend.capabilities.token_continuation:
                raise ValueError(f"backend {backend.name} cannot continue token sequences")
            between = self.weights.between_tokens if inflight_updates != "off" else None
            self.episodes = episodes(backend, between, metrics)

    @property
    def connected(self) -> bool:
        return self.session.connected

    def healthy(self) -> tuple[bool, str]:
        """For /healthz: the learner answers and the engine does."""
        if self.finished is not None:
            return True, f"finished: the learner's run ended at version {self.finished}"
        if not self.session.connected:
            return False, f"not connected to {self.session.learner}: {self.session.last_error}"
        engine_ok, why = self.backend.health()
        if not engine_ok:
            return False, f"engine unreachable: {why}"
        return True, f"ok version={self.backend.version}"

    def run(self) -> None:
        backoff = 0.5
        while not self.stop.is_set():
            try:
                welcome = self.session.connect()
                if not self.bounds.welcome_ok(welcome):
                    raise LearnerGone("its welcome is outside this generator's limits")
                self.weights.connected(welcome)
                backoff = 0.5
                self._serve()
            except Stopping:
                # Stopped while a lease request was unanswered: its lease goes back too.
                try:
                    self.session.return_prefetched()
                except RunFinished as fin:
                    self._finish(fin)
                break
            except RunFinished as fin:
                self._finish(fin)
                break
            except LearnerGone as exc:
                fin = self._told_finished()
                if fin is not None:
                    self._finish(fin)
                    break
                self.session.last_error = str(exc)
                logger.warning("learner unreachable (%s); reconnecting in %.1fs", exc, backoff)
                self.metrics.reconnects.inc()
            finally:
                self.session.close()
            if not self.stop.is_set():
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
        self._summarise(force=True)

    def _finish(self, fin: RunFinished) -> None:
        self.finished = fin.version
        logger.info("%s; exiting", fin)

    def _told_finished(self) -> RunFinished | None:
        """The learner went silent: had it announced the end of its run first? (It exits
        soon after; the announcement may wait, unread, in our subscription.)"""
        if not self.session.connected:
            return None
        try:
            self.weights.drain()
        except RunFinished as fin:
            return fin
        return None

    def _serve(self) -> None:
        while not self.stop.is_set():
            self._summarise()
            with self.phases.timed("weights"):
                self.weights.drain()
                self.weights.update()
            with self.phases.timed("lease"):
                reply = self.session.next_leases(self.groups_per_batch)
            if isinstance(reply, list):
                # One outside our limits is not generated: the learner re-issues it once it
                # expires.
                leases = [lease for lease in reply if self.bounds.lease_ok(lease)]
                if not leases:
                    self.stop.wait(1.0)
                    continue
                with self.phases.timed("lease"):
                    self._prefetch()
                self._work(leases)
            elif isinstance(reply, LeaseDenied):
                with self.phases.timed("gate"):
                    self._wait_denied(reply)
            else:
                logger.warning("unexpected reply %s to a lease request", reply.TYPE)
        self.session.return_prefetched()

    def _prefetch(self) -> None:
        """Ask for the next leases before generating these: the learner's replies wait in the
        socket, so the round trip is off the critical path. The gate sees the version we hold
        now, which is at most the one the next groups are generated with (the bound holds)."""
        if not self.prefetch_lease or self.stop.is_set():
            return
        lease_seconds = self.session.lease_seconds
        if not lease_seconds or self._last_generate > lease_seconds / 4:
            # Not heartbeated until read: it must not expire while the current group runs.
            return
        self.session.prefetch_leases(self.groups_per_batch)

    def _work(self, leases: list[Lease]) -> None:
        with self.session.holding(*leases):
            t = time.time()
            self.weights.inflight_load_seconds = 0.0
            groups = self._generate(leases)
            # Generation work only: weight loads in the middle of it are not generating, and
            # the learner reports generate_seconds as the generators' busy time.
            dt = time.time() - t - self.weights.inflight_load_seconds
            self._last_generate = dt
            self.phases.add("generate", dt)
            self.phases.add("weights", self.weights.inflight_load_seconds)
            tokens = [sum(len(s.tokens) for s in samples) for samples, _ in groups]
            for lease, (samples, baseline), n in zip(leases, groups, tokens):
                # A batch's seconds are shared by its groups in proportion to their tokens.
                share = n / sum(tokens) if sum(tokens) else 1.0 / len(leases)
                self._push(lease, samples, baseline, dt * share)

    def _generate(self, leases: list[Lease]) -> list[tuple[list, np.ndarray | None]]:
        """Each lease's samples and greedy baseline (ReMax; None without). Several leases of
        the same sampling settings go to the backend as one batch when it can take them."""
        if self.episodes is not None:
            runs = [self.episodes.run(x.prompt_ids, x.group_size, x.sampling) for x in leases]
        elif (
            len(leases) > 1
            and self.backend.capabilities.batched_groups
            and all(x.sampling == leases[0].sampling for x in leases)
        ):
            prompts = [x.prompt_ids for x in leases]
            sizes = [x.group_size for x in leases]
            runs = self.backend.generate_groups(prompts, sizes, leases[0].sampling)
        else:
            runs = [self.backend.generate(x.prompt_ids, x.group_size, x.sampling) for x in leases]
        out = []
        for lease, samples in zip(leases, runs):
            baseline = None
            if lease.greedy_baseline:
                baseline = self.backend.generate_greedy(
                    lease.prompt_ids, lease.sampling.max_new_tokens
                )
            out.append((samples, baseline))
        return out

    def _push(self, lease: Lease, samples: list, baseline, seconds: float) -> None:
        group = RolloutGroup(
            lease_id=lease.lease_id,
            generator_id=self.session.generator_id,
            tokens=_cat([s.tokens for s in samples], np.int32),
            logprobs=_cat([s.logprobs for s in samples], np.float32),
            versions=_cat([s.versions for s in samples], np.int32),
            lengths=np.array([len(s.tokens) for s in samples], dtype=np.int32),
            finish_reasons=[s.finish_reason for s in samples],
            generate_seconds=seconds,
            baseline_tokens=baseline,
        )
        if self.episodes is not None:
            group.loss_mask = _cat([s.mask for s in samples], np.uint8)
            group.env_rewards = np.array([s.env_reward for s in samples], np.float32)
        with self.phases.timed("push"):
            self.session.push_group(group)
        self.metrics.groups.inc()
        self.metrics.tokens.inc(int(group.lengths.sum()))
        self.metrics.generate_seconds.inc(seconds)
        self._activity.groups += 1
        self._activity.tokens += int(group.lengths.sum())

    def _wait_denied(self, denied: LeaseDenied) -> None:
        """Sleep on the weights socket (a new version is what usually unblocks the gate)."""
        t = time.time()
        version = self.backend.version
        if denied.reason == "hello":
            # The learner does not know this connection (it restarted while our socket
            # reconnected by itself): say hello again, as on a new connection.
            welcome = self.session.hello()
            if isinstance(welcome, Welcome):
                self.weights.connected(welcome)
        elif denied.learner_version != version and self.weights.pending is None:
            # We may have missed an announcement (PUB drops while connecting): ask again.
            welcome = self.session.hello()
            if isinstance(welcome, Welcome) and welcome.weights_version not in (-1, version):
                self.weights.latest(welcome)
        if self.weights.pending is None:
            self.session.wait_announcement(max(denied.retry_after, 0.01))
        self.metrics.gate_wait_seconds.inc(time.time() - t)
        self._activity.gate_wait += time.time() - t

    def _summarise(self, force: bool = False) -> None:
        """Every SUMMARY_SECONDS (and when the loop ends, if anything happened), one INFO
        line of what was done since the last one."""
        a, now = self._activity, time.monotonic()
        loads = self.weights.recent_loads
        if now - a.since < SUMMARY_SECONDS and not (force and (a.groups or loads)):
            return
        logger.info(format_activity(now - a.since, a, self.backend.version, loads))
        self.weights.recent_loads = []
        self._activity = Activity(since=now)


def _cat(arrays: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype)


@dataclass
class Activity:
    """What the generator did since `since` (monotonic seconds), for the summary line."""

    since: float = field(default_factory=time.monotonic)
    groups: int = 0
    tokens: int = 0
    gate_wait: float = 0.0


def format_activity(
    seconds: float, a: Activity, version: int, loads: list[tuple[str, float]]
) -> str:
    """`last 30s: 12 groups, 3400 tokens (113 tok/s), weights v7 (6 loads from disk, mean
    0.05s), gate wait 1.2s`: tokens/s over the whole interval, loads grouped by transport."""
    rate = a.tokens / max(seconds, 1e-9)
    line = f"last {seconds:.0f}s: {a.groups} groups, {a.tokens} tokens ({rate:.0f} tok/s)"
    line += f", weights v{version}"
    if loads:
        by_how: dict[str, int] = {}
        for how, _ in loads:
            by_how[how] = by_how.get(how, 0) + 1
        hows = ", ".join(f"{n} {how}" for how, n in by_how.items())
        mean = sum(s for _, s in loads) / len(loads)
        plural = "s" if len(loads) != 1 else ""
        line += f" ({len(loads)} load{plural}: {hows}; mean {mean:.2f}s)"
    return line + f", gate wait {a.gate_wait:.1f}s"

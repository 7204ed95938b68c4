"""Rewards scored in a bounded pool of worker processes, each call under a hard deadline.

A reward may be slow (a reward model), pathological (sympy on a hostile expression) or simply
hang (a plug-in bug); none of that may stop the hub's socket loop or the training thread
(DESIGN.md, "Rewards"). So each group is scored in one of `reward.workers` spawned processes:

- one pool-side thread per worker takes a job from a bounded queue, builds it (decoding
  token ids to text happens here, off the socket thread), sends it down the worker's pipe and
  waits at most `reward.timeout_seconds` for the answer;
- a worker that overruns is killed (terminate, then kill) and replaced, and the group fails
  with cause `reward_timeout`; a reward that raises fails it with `reward_error`, and so does
  a worker that died under it (replaced too);
- the worker calls the reward on its main thread, where `signal.alarm` (math-verify) works.

Rewards that run no user code and cost time linear in a bounded completion (exact match,
the overlong penalty) are scored on the pool threads themselves when `reward.isolation`
allows (`_ThreadWorker`): a process round trip per group would be most of their cost, paid on
the learner's cores.

The pool knows nothing of leases: `submit(make_job, done)` runs `done(outcome)` on the pool
thread once the job is scored or has failed. Results and jobs cross the pipe pickled: both
ends are this program's own processes, never the network.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from asyncrl.learner.rewards import RewardInput
from asyncrl.learner.rewards.config import RewardConfig

logger = logging.getLogger(__name__)

# Spawning a worker and building its reward (imports; a reward model loads its weights) is
# kept out of the per-group deadline and bounded on its own.
START_TIMEOUT_S = 300.0
# Jobs queued per worker before `submit` refuses: enough that no worker idles between groups
# when many return at once; past it the hub stops reading rollouts (ZeroMQ's queue and the
# generators' sockets hold them) while leases, heartbeats and weights go on.
QUEUE_PER_WORKER = 4


@dataclass
class RewardJob:
    """One group to score (what every reward function reads, `RewardInput`), plus the
    greedy baseline completion (ReMax) when the generator sent one."""

    input: RewardInput
    baseline: str | None = None
    baseline_ids: list[int] = field(default_factory=list)
    weights: list[float] | None = None  # the live reward.weights; None: as configured


@dataclass
class Scored:
    rewards: list[float]
    metrics: dict[str, float] = field(default_factory=dict)
    baseline_reward: float | None = None
    clusters: list[int] | None = None  # the voting reward's answer per sample, if any


@dataclass
class Failed:
    cause: str  # "reward_error" | "reward_timeout"
    detail: str


Outcome = Scored | Failed


def _watch_parent(parent: int) -> None:
    # A worker stuck in a reward never reads its pipe's end-of-file: leave when the learner
    # is gone, so a crashed learner leaves no process behind.
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _worker_main(cfg: RewardConfig, conn, parent: int) -> None:
    """A worker process: build the reward once, then score jobs until the pipe closes."""
    from asyncrl.learner.rewards import setup_reward

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the learner decides when workers stop
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    try:
        fn = setup_reward(cfg)
    except Exception as exc:
        conn.send(Failed("reward_error", f"reward setup failed: {exc!r}"))
        return
    conn.send(None)  # ready
    try:
        while True:
            try:
                job: RewardJob | None = conn.recv()
            except EOFError:
                return
            if job is None:
                return
            conn.send(score_job(fn, job))
    finally:
        fn.close()


def score_job(fn, job: RewardJob) -> Outcome:
    """One group scored by the built reward `fn`: what it raises fails the group, never the
    worker or the run."""
    try:
        res = fn(job.input, job.weights)
        baseline = None
        if job.baseline is not None:
            baseline = float(
                fn.score_baseline(job.input, job.baseline, job.baseline_ids, job.weights)
            )
        rewards = [float(r or 0.0) for r in res.rewards]  # combined: never None
        return Scored(rewards, dict(res.metrics), baseline, res.clusters)
    except Exception as exc:  # the group fails; the worker and the run go on
        return Failed("reward_error", repr(exc))


class _Worker:
    """One worker process and its pipe; started on demand, killed on overrun."""

    def __init__(self, cfg: RewardConfig, index: int, closed: threading.Event):
        self.cfg = cfg
        self.index = index
        self.closed = closed  # set by the pool's close: start nothing new after it
        self.proc = None
        self.conn = None
        self._kill_lock = threading.Lock()  # the pool's close and its thread may both kill

    def ensure(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            return
        if self.closed.is_set():
            raise RuntimeError("reward pool is closed")
        self.kill()
        ctx = mp.get_context("spawn")  # the learner holds CUDA and threads; fork copies badly
        parent_end, child_end = ctx.Pipe()
        # Not a daemon: a reward may start processes of its own (math-verify's pool), which
        # daemonic processes may not. Exit is ensured by `kill` and the parent watch.
        proc = ctx.Process(
            target=_worker_main,
            args=(self.cfg, child_end, os.getpid()),
            name=f"asyncrl-reward-{self.index}",
            daemon=False,
        )
        proc.start()
        child_end.close()  # so a dead worker reads as end-of-file here
        self.proc, self.conn = proc, parent_end
        if not parent_end.poll(START_TIMEOUT_S):
            self.kill()
            raise RuntimeError(f"reward worker did not start within {START_TIMEOUT_S:.0f}s")
        try:
            ready = parent_end.recv()
        except EOFError:
            ready = Failed("reward_error", f"reward worker exited with {proc.exitcode}")
        if isinstance(ready, Failed):
            self.kill()
            raise RuntimeError(ready.detail)

    def score(self, job: RewardJob, timeout: float) -> Outcome:
        self.conn.send(job)
        if not self.conn.poll(timeout):
            self.kill()
            return Failed("reward_timeout", f"reward still running after {timeout:g}s; killed")
        try:
            return self.conn.recv()
        except EOFError:
            proc = self.proc
            self.kill()
            code = proc.exitcode if proc is not None else None
            return Failed("reward_error", f"reward worker died (exit code {code})")

    def kill(self) -> None:
        with self._kill_lock:
            proc, conn, self.proc, self.conn = self.proc, self.conn, None, None
        if proc is not None:
            # Killing first wakes a thread waiting on the pipe (end-of-file) before it closes.
            proc.terminate()
            proc.join(1.0)
            if proc.is_alive():
                proc.kill()  # stuck in C code that ignores SIGTERM
                proc.join(1.0)
        if conn is not None:
            conn.close()


class _ThreadWorker:
    """`_Worker`'s part played on the pool thread itself: the reward is built once and called
    here, with no deadline (only `IN_THREAD_SAFE` rewards, whose cost is bounded, get here)."""

    def __init__(self, cfg: RewardConfig, index: int, closed: threading.Event):
        self.cfg = cfg
        self.index = index
        self.closed = closed
        self.fn = None

    def ensure(self) -> None:
        if self.closed.is_set():
            raise RuntimeError("reward pool is closed")
        if self.fn is None:
            from asyncrl.learner.rewards import setup_reward

            self.fn = setup_reward(self.cfg)

    def score(self, job: RewardJob, timeout: float) -> Outcome:
        return score_job(self.fn, job)

    def kill(self) -> None:
        fn, self.fn = self.fn, None
        if fn is not None:
            fn.close()


class RewardPool:
    """`cfg.workers` reward processes (or, `cfg.scores_in_thread()`, in-thread scorers) fed
    from a bounded queue by one thread each."""

    def __init__(self, cfg: RewardConfig):
        self.timeout = cfg.timeout_seconds
        self._closed = threading.Event()
        self.in_thread = cfg.scores_in_thread()
        kind = _ThreadWorker if self.in_thread else _Worker
        self._workers = [kind(cfg, i, self._closed) for i in range(cfg.workers)]
        self._queue: queue.Queue = queue.Queue(QUEUE_PER_WORKER * cfg.workers)
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the workers and wait until each has built its reward, so a reward that cannot
        be built (a plug-in that does not import) fails the run at start, not per group."""
        with ThreadPoolExecutor(len(self._workers)) as ex:
            started = [ex.submit(w.ensure) for w in self._workers]
        # Workers are not daemons, and multiprocessing joins such children at interpreter
        # exit: a learner that dies of an exception before `close` would wait forever for
        # workers blocked on their pipes. Registered after multiprocessing's own exit handler
        # (the first start registered it), this one runs before it and kills them.
        atexit.register(self.close)
        for f in started:
            if f.exception() is not None:
                self.close()
                raise f.exception()
        for w in self._workers:
            t = threading.Thread(target=self._serve, args=(w,), name=f"reward-{w.index}")
            t.daemon = True
            t.start()
            self._threads.append(t)

    def saturated(self) -> bool:
        """True when `submit` would refuse: the caller should hold further groups back."""
        return self._queue.full()

    def submit(self, make_job: Callable[[], RewardJob], done: Callable[[Outcome], None]) -> bool:
        """Queue a group without blocking; False when the queue is full. `make_job` and
        `done` run on a pool thread."""
        try:
            self._queue.put_nowait((make_job, done))
        except queue.Full:
            return False
        return True

    def close(self) -> None:
        """Stop promptly: queued jobs are dropped unscored and the workers are killed."""
        atexit.unregister(self.close)
        self._closed.set()
        for w in self._workers:
            w.kill()  # a thread waiting on its worker reads end-of-file and stops
        for _ in self._threads:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                break  # threads also stop on `_closed` after their current job
        for t in self._threads:
            t.join(timeout=5)

    def _serve(self, worker: _Worker) -> None:
        while not self._closed.is_set():
            item = self._queue.get()
            if item is None or self._closed.is_set():
                return
            make_job, done = item
            try:
                job = make_job()
                worker.ensure()
                outcome = worker.score(job, self.timeout)
            except Exception as exc:  # decoding, or a replacement worker that failed to start
                if self._closed.is_set():
                    return
                logger.exception("reward job failed before scoring")
                outcome = Failed("reward_error", repr(exc))
            if self._closed.is_set():
                return
            done(outcome)
            if isinstance(outcome, Failed) and not self._closed.is_set():
                self._replace(worker)

    def _replace(self, worker: _Worker) -> None:
        # A killed or dead worker is started again now, so the next group does not wait for
        # the spawn; if that fails, the next job tries again.
        try:
            worker.ensure()
        except Exception:
            if not self._closed.is_set():
                logger.exception("reward worker %d could not be restarted", worker.index)

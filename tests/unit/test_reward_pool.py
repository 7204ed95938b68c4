"""The reward pool: results of a normal reward, a raising reward reported as `reward_error`, a
hanging one killed at its deadline and replaced, and a prompt shutdown. Workers are real
spawned processes running plug-ins from tests/unit/reward_plugins.py."""

from __future__ import annotations

import queue
import subprocess
import sys
import time

import pytest

from asyncrl.learner.rewards import RewardConfig, RewardInput
from asyncrl.learner.rewards.pool import Failed, RewardJob, RewardPool, Scored

PLUGINS = "tests.unit.reward_plugins"


def _pool(fn: str, timeout: float = 30.0, workers: int = 1) -> RewardPool:
    cfg = RewardConfig(
        name="plugin", plugin=f"{PLUGINS}:{fn}", workers=workers, timeout_seconds=timeout
    )
    pool = RewardPool(cfg)
    pool.start()
    return pool


def _job(prompt, completions, row, baseline=None) -> RewardJob:
    """A group of one-token completions (ids unused by these plug-ins)."""
    inp = RewardInput(prompt, prompt, completions, [[1]] * len(completions), row)
    return RewardJob(inp, baseline, [1] if baseline is not None else [])


def _rewards(out):
    assert isinstance(out, Scored), out
    return out.rewards


def _score(pool: RewardPool, job: RewardJob, wait: float = 60.0):
    """Submit one job and wait for its outcome (delivered on a pool thread)."""
    results: queue.Queue = queue.Queue()
    assert pool.submit(lambda: job, results.put)
    return results.get(timeout=wait)


def test_scores_a_group_and_its_baseline():
    pool = _pool("exact")
    try:
        # Answer "4": completions "4" -> 1, "5" -> 0, "4" -> 1; the greedy baseline "5" -> 0.
        job = _job("2+2=", ["4", "5", "4"], {"answer": "4"}, "5")
        assert _score(pool, job) == Scored([1.0, 0.0, 1.0], {"reward_exact_mean": 2 / 3}, 0.0)
        # Without a baseline there is no baseline reward.
        assert _score(pool, _job("p", ["4"], {"answer": "4"})).baseline_reward is None
    finally:
        pool.close()


def test_a_raising_reward_is_an_error_and_the_worker_goes_on():
    pool = _pool("moody")
    try:
        out = _score(pool, _job("raise", ["a"], {"answer": "a"}))
        assert isinstance(out, Failed) and out.cause == "reward_error"
        assert "does not like the prompt" in out.detail
        assert _rewards(_score(pool, _job("ok", ["a", "b"], {"answer": "a"}))) == [1.0, 0.0]
    finally:
        pool.close()


def test_a_hanging_reward_is_killed_at_its_deadline_and_replaced():
    pool = _pool("moody", timeout=2.0)
    try:
        pid_before = pool._workers[0].proc.pid
        t0 = time.monotonic()
        out = _score(pool, _job("hang", ["a"], {"answer": "a"}))
        waited = time.monotonic() - t0
        assert isinstance(out, Failed) and out.cause == "reward_timeout"
        # Killed at the 2 s deadline, not later (generous bound for a loaded machine).
        assert 2.0 <= waited < 10.0
        # The next group is scored, by a fresh process.
        assert _rewards(_score(pool, _job("ok", ["a"], {"answer": "a"}))) == [1.0]
        assert pool._workers[0].proc.pid != pid_before
    finally:
        pool.close()


def test_two_workers_score_side_by_side_while_one_hangs():
    pool = _pool("moody", timeout=30.0, workers=2)
    try:
        results: queue.Queue = queue.Queue()
        assert pool.submit(lambda: _job("hang", ["a"], {"answer": "a"}), results.put)
        # One worker is stuck for 30 s; the other scores this group long before.
        ok = _job("ok", ["b"], {"answer": "b"})
        assert _rewards(_score(pool, ok, wait=20.0)) == [1.0]
    finally:
        t0 = time.monotonic()
        pool.close()
        # Shutdown does not wait for the hanging reward: both workers are killed at once.
        assert time.monotonic() - t0 < 5.0
    assert all(w.proc is None for w in pool._workers)


def test_the_queue_is_bounded():
    pool = _pool("moody", timeout=30.0)
    try:
        # One worker hangs on the first job; 4 per worker more wait in the queue; the next
        # submit is refused (the hub then stops reading rollouts).
        hang = _job("hang", ["a"], {"answer": "a"})
        assert pool.submit(lambda: hang, lambda out: None)
        deadline = time.monotonic() + 10
        while not pool._queue.empty():  # wait until the worker's thread took it
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for _ in range(4):
            assert not pool.saturated()
            assert pool.submit(lambda: hang, lambda out: None)
        assert pool.saturated()
        assert not pool.submit(lambda: hang, lambda out: None)
    finally:
        pool.close()


def test_a_reward_that_cannot_be_built_fails_at_start():
    pool = RewardPool(RewardConfig(name="plugin", plugin=f"{PLUGINS}:missing", workers=1))
    with pytest.raises(RuntimeError, match="no attribute 'missing'"):
        pool.start()


def test_a_process_that_dies_with_the_pool_open_exits(tmp_path):
    # Workers are not daemons, and multiprocessing joins such children at exit: without the
    # pool's exit handler, a learner that raised with its pool still open hung there forever
    # (its workers wait on their pipes) instead of exiting non-zero for a supervisor.
    script = tmp_path / "crash.py"
    script.write_text(
        "from asyncrl.learner.rewards import RewardConfig\n"
        "from asyncrl.learner.rewards.pool import RewardPool\n"
        "if __name__ == '__main__':\n"
        "    RewardPool(RewardConfig(workers=2, isolation='process')).start()\n"
        "    raise RuntimeError('learner crashed')\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "learner crashed" in proc.stderr


@pytest.mark.parametrize(
    "settings, in_thread",
    [
        ({}, True),  # the default single reward, exact: built-in, bounded, no user code
        (
            {"functions": ["exact", "overlong"], "overlong": {"max_length": 8, "cache_length": 2}},
            True,
        ),
        ({"name": "math"}, False),  # math-verify needs signal.alarm and can hang in sympy
        ({"name": "plugin", "plugin": f"{PLUGINS}:exact"}, False),  # user code: always a process
        ({"isolation": "process"}, False),  # asked for, even where a thread would do
    ],
)
def test_auto_isolation_scores_in_threads_only_what_cannot_hang(settings, in_thread):
    assert RewardConfig(**settings).scores_in_thread() is in_thread


def test_thread_isolation_is_refused_for_a_reward_that_needs_a_process():
    with pytest.raises(ValueError, match="'thread' is for exact, overlong only; math must"):
        RewardConfig(name="math", isolation="thread")


def test_in_thread_pool_scores_and_survives_a_raising_reward():
    import multiprocessing

    pool = RewardPool(RewardConfig(workers=1))
    pool.start()
    try:
        assert pool.in_thread and not multiprocessing.active_children()  # no worker process
        # Answer "4": "4" -> 1, " 4 " -> 1 (stripped), "5" -> 0; the greedy baseline "4" -> 1.
        job = _job("2+2=", ["4", " 4 ", "5"], {"answer": "4"}, "4")
        assert _score(pool, job) == Scored([1.0, 1.0, 0.0], {"reward_exact_mean": 2 / 3}, 1.0)
        # A row without the answer column makes exact raise: that group fails, the pool goes on.
        out = _score(pool, _job("p", ["4"], {"label": "4"}))
        assert isinstance(out, Failed) and out.cause == "reward_error" and "answer" in out.detail
        assert _rewards(_score(pool, _job("p", ["4"], {"answer": "4"}))) == [1.0]
    finally:
        pool.close()

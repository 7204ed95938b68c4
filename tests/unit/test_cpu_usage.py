"""learner.cpu_usage: the learner's CPU split by spender (training thread, other threads, child
processes), which `asyncrl bench` reads to say what shares the training thread's cores."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from asyncrl.learner.cpu_usage import CpuSnapshot


def test_since_subtracts_by_spender_and_never_goes_negative():
    before = CpuSnapshot(thread=1.0, other_threads=0.5, children=3.0)
    after = CpuSnapshot(thread=5.0, other_threads=1.0, children=2.0)
    # 5 - 1 = 4 and 1 - 0.5 = 0.5; children 2 - 3 < 0 (a child that ended took its 3 s
    # away): 0, not negative.
    assert after.since(before) == {
        "training_thread": 4.0,
        "other_threads": 0.5,
        "child_processes": 0.0,
    }


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads Linux's /proc")
def test_a_busy_thread_and_a_busy_child_land_where_they_belong():
    # A child that burns 0.4 s of CPU, then stays alive until told to go (a snapshot counts
    # only children alive at that moment).
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "end = time.process_time() + 0.4\n"
            "while time.process_time() < end: pass\n"
            "print('done', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        before = CpuSnapshot.take()
        worker = threading.Thread(target=_burn, args=(0.4,))
        worker.start()
        worker.join()
        assert child.stdout.readline() == "done\n"
        spent = CpuSnapshot.take().since(before)
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    # Each burned 0.4 s; /proc counts in 10 ms ticks, and the interpreter's start-up before
    # the first snapshot may or may not fall inside it: at least 0.3 s each.
    assert spent["other_threads"] >= 0.3
    assert spent["child_processes"] >= 0.3
    # This thread only waited: far less than either.
    assert spent["training_thread"] < 0.2

"""Where the learner process's CPU time goes, by who spends it: the training thread, the
process's other threads (the hub's socket loop, reward-pool threads, ZeroMQ's I/O thread,
the metrics server) and its child processes (reward workers and what they start).

`asyncrl bench` needs this split. On a host where the training thread shares its cores with
the rest, every second the others spend is a second training waits, but only while training
runs: in a synchronous loop that work falls into the learner's waits. Threads are read
from the process and thread clocks; live child processes from Linux's /proc (10 ms ticks;
elsewhere only reaped children count). With `train.threads` above 1, torch's intra-op
threads work for training but count among the other threads; `asyncrl bench` runs one.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

try:
    import resource
except ImportError:  # not on Windows
    resource = None

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_cpu(path: str) -> tuple[int, float] | None:
    """(parent pid, user + system seconds) from a /proc stat file; None when it is gone."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


@dataclass(frozen=True)
class CpuSnapshot:
    """Cumulative CPU seconds at one moment, split by who spent them."""

    thread: float = 0.0  # the thread that took the snapshot (the training thread)
    other_threads: float = 0.0  # the process's others, ended ones included
    children: float = 0.0  # descendant processes: alive ones, and reaped ones (rusage)

    @classmethod
    def take(cls) -> CpuSnapshot:
        mine = time.thread_time()
        # The process clock keeps the time of threads that have ended.
        others = max(0.0, time.process_time() - mine)
        children = 0.0
        if resource is not None:
            used = resource.getrusage(resource.RUSAGE_CHILDREN)
            children = used.ru_utime + used.ru_stime
        if os.path.isdir("/proc/self/task"):
            children += _descendants_cpu(os.getpid())
        return cls(mine, others, children)

    def since(self, earlier: CpuSnapshot) -> dict[str, float]:
        """CPU seconds spent between `earlier` and this snapshot, by spender. A child that
        ended unreaped in between takes its seconds with it (never negative)."""
        return {
            "training_thread": round(max(0.0, self.thread - earlier.thread), 3),
            "other_threads": round(max(0.0, self.other_threads - earlier.other_threads), 3),
            "child_processes": round(max(0.0, self.children - earlier.children), 3),
        }


def _descendants_cpu(root: int) -> float:
    """Summed CPU seconds of the processes below `root` (every thread of each)."""
    parent_of: dict[int, int] = {}
    cpu_of: dict[int, float] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        got = _stat_cpu(f"/proc/{name}/stat")  # a process's stat sums all its threads
        if got is not None:
            parent_of[int(name)], cpu_of[int(name)] = got
    total = 0.0
    for pid in cpu_of:
        p, seen = parent_of.get(pid), 0
        while p and p != root and seen < 64:  # bounded walk: a pid loop cannot hang it
            p, seen = parent_of.get(p), seen + 1
        if p == root:
            total += cpu_of[pid]
    return total

"""What a process's memory is made of, on /metrics: the standard `process_*` series
(resident bytes, CPU seconds, start time, open files; Linux /proc) and the C allocator's heap
split into bytes in use and bytes freed but still held (`asyncrl_process_heap_bytes`).

Why the split: resident memory alone cannot tell a leak from fragmentation. Large buffers
that come and go (a learner's weight blobs at every publish, a generator's batches) can leave
glibc holding memory that was freed, so RSS creeps up although nothing is leaked. A leak
grows `state="in_use"`; fragmentation grows `state="free"`, which levels off.

The heap figures come from glibc's `mallinfo2` (glibc 2.33 or newer). Elsewhere (musl,
macOS, older glibc) the series has no samples rather than wrong ones. What it does not cover:
memory mapped by other means, such as CPython's small-object arenas and torch's file-backed
tensors; the resident figure does.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import GaugeMetricFamily

HEAP_STATES = ("in_use", "free")


class _MallInfo2(ctypes.Structure):
    # glibc's `struct mallinfo2`: ten size_t fields, in this order.
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",  # bytes obtained with sbrk (main arena) or mmapped heaps
            "ordblks",  # free chunks
            "smblks",  # free fastbin chunks
            "hblks",  # chunks allocated with mmap
            "hblkhd",  # bytes in chunks allocated with mmap
            "usmblks",  # unused (always 0)
            "fsmblks",  # bytes in free fastbin chunks
            "uordblks",  # bytes in chunks in use (not counting mmapped ones)
            "fordblks",  # bytes in free chunks
            "keepcost",  # releasable bytes at the top of the main heap
        )
    ]


def mallinfo2_reader() -> Callable[[], _MallInfo2] | None:
    """glibc's `mallinfo2` as a callable, or None where the C library has none."""
    try:
        fn = ctypes.CDLL(None).mallinfo2  # the process's own C library
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    fn.argtypes = []
    return fn


def heap_bytes(info: _MallInfo2) -> dict[str, float]:
    """Bytes in use (heap chunks and mmapped chunks) and bytes free but held by the allocator
    (not returned to the system), from one `mallinfo2` reading."""
    return {"in_use": float(info.uordblks + info.hblkhd), "free": float(info.fordblks)}


HEAP_HELP = (
    "The C allocator's heap (glibc mallinfo2, read at each scrape): state=in_use is bytes "
    "allocated and not freed (grows with a leak); state=free is bytes freed but still held, "
    "not returned to the system (grows with fragmentation, then levels off)."
)


class MemoryMetrics:
    """Registers the memory series on `registry`; each is read at scrape time, the heap
    figures from one `mallinfo2` call (it walks every arena under its lock)."""

    def __init__(self, registry: CollectorRegistry, reader=mallinfo2_reader):
        ProcessCollector(registry=registry)
        self._read = reader()
        if self._read is not None:
            registry.register(self)

    def describe(self):
        yield GaugeMetricFamily("asyncrl_process_heap_bytes", HEAP_HELP, labels=["state"])

    def collect(self):
        family = GaugeMetricFamily("asyncrl_process_heap_bytes", HEAP_HELP, labels=["state"])
        for state, value in heap_bytes(self._read()).items():
            family.add_metric([state], value)
        yield family

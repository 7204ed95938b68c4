"""The memory series every role serves (launch.memory): the heap split is read right from
mallinfo2, a leak shows in `in_use`, fragmentation in `free`, and a C library without
mallinfo2 leaves the heap series empty while the process series stay."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from asyncrl.launch.memory import MemoryMetrics, _MallInfo2, heap_bytes, mallinfo2_reader

MiB = 1 << 20
IN_USE, FREE = "asyncrl_process_heap_bytes{state=in_use}", "asyncrl_process_heap_bytes{state=free}"
glibc = pytest.mark.skipif(mallinfo2_reader() is None, reason="C library has no mallinfo2")


def _samples(registry: CollectorRegistry) -> dict[str, float]:
    out = {}
    for family in registry.collect():
        for s in family.samples:
            out[s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items()))] = s.value
    return out


def test_heap_bytes_from_one_reading():
    # In use: chunks in the heap (uordblks 1000) plus mmapped chunks (hblkhd 4096) = 5096.
    # Free but held: fordblks = 300. The other fields (arena, keepcost, ...) are not summed.
    info = _MallInfo2(arena=9999, uordblks=1000, hblkhd=4096, fordblks=300, keepcost=77)
    assert heap_bytes(info) == {"in_use": 5096.0, "free": 300.0}


@glibc
def test_a_held_allocation_shows_in_use_and_goes_when_freed():
    registry = CollectorRegistry()
    MemoryMetrics(registry)
    before = _samples(registry)[IN_USE]
    # 64 MiB in one bytearray: one malloc (mmapped at this size), counted in hblkhd.
    block = bytearray(64 * MiB)
    held = _samples(registry)[IN_USE]
    assert held - before >= 64 * MiB
    del block
    assert _samples(registry)[IN_USE] <= held - 60 * MiB


@glibc
def test_fragmentation_shows_as_free_not_in_use():
    registry = CollectorRegistry()
    MemoryMetrics(registry)
    before = _samples(registry)
    # 40,000 objects of 2 KiB (over CPython's small-object limit, so each is a malloc chunk in
    # the heap); freeing every other one leaves 20,000 holes that cannot merge with a free
    # neighbour: about 40 MiB freed but held (a few go to glibc's per-thread cache, which
    # counts as in use). In use drops by about the same.
    blocks = [bytes(2048) for _ in range(40_000)]
    full = _samples(registry)
    del blocks[::2]
    holed = _samples(registry)
    assert holed[FREE] - full[FREE] >= 35 * MiB
    assert full[IN_USE] - holed[IN_USE] >= 35 * MiB
    assert full[IN_USE] - before[IN_USE] >= 75 * MiB  # 40,000 x 2 KiB = 78 MiB
    del blocks


def test_no_mallinfo2_leaves_the_heap_series_empty():
    registry = CollectorRegistry()
    MemoryMetrics(registry, reader=lambda: None)
    names = {k.split("{")[0] for k in _samples(registry)}
    assert not any(n.startswith("asyncrl_process_heap_bytes") for n in names)
    assert "process_resident_memory_bytes" in names and "process_start_time_seconds" in names

"""The nccl transport's groups: bucket plans and one channel (process group + broadcast
thread) per generator. `publishers/nccl.py` hands them out from the hub.

Each generator that asks (`NcclJoin`) gets a channel: a process group of world size
1 + the server's tensor-parallel ranks, the learner being rank 0, created the way SGLang's
`/init_weights_update_group` creates its side (TCP rendezvous at `address:port`, a store
prefixed with the group name). Per version the generator asks for a plan (`NcclPull`); the
channel then broadcasts the version's buckets in order while the generator has the server
receive them (`/update_weights_from_distributed` with `load_format: flattened_bucket`).

What is broadcast is the blob the hub already holds for the zmq transport: a bucket is a byte
range of its safetensors data section, which is exactly SGLang's flattened bucket (tensors'
bytes concatenated in order, no padding), so nothing is re-laid out and training goes on
while generators pull, as with chunks. Broadcasts to different generators are serialised (one
staging buffer, no two communicators racing on the learner's GPU). A generator that dies
mid-broadcast fails its channel only: the group is created with NCCL's error handling set to
clean up without ending the process, and the broadcast waits with a timeout.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from asyncrl.protocol.blob import DTYPE_TAGS, decode_header
from asyncrl.protocol.sockets import free_port

logger = logging.getLogger(__name__)


@dataclass
class Bucket:
    """Bytes [start, end) of the blob and the tensors they hold, in order."""

    start: int
    end: int
    names: list[str] = field(default_factory=list)
    dtypes: list[str] = field(default_factory=list)
    shapes: list[list[int]] = field(default_factory=list)


def plan_buckets(blob, bucket_bytes: int) -> list[Bucket]:
    """Split a safetensors blob's tensors into buckets of at most `bucket_bytes` (a larger
    tensor gets a bucket of its own). A bucket also ends where a tensor's offset inside it
    would not be a multiple of its item size: the receiver views each tensor in the bucket
    with its dtype, which needs aligned offsets."""
    header, base = decode_header(blob)
    entries = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    buckets: list[Bucket] = []
    for name, meta in entries:
        begin, end = (base + x for x in meta["data_offsets"])
        tag = meta["dtype"]
        cur = buckets[-1] if buckets else None
        if (
            cur is None
            or cur.end != begin
            or (end - cur.start > bucket_bytes and cur.names)
            or (begin - cur.start) % DTYPE_TAGS[tag][1]
        ):
            cur = Bucket(begin, begin)
            buckets.append(cur)
        cur.end = end
        cur.names.append(name)
        cur.dtypes.append(DTYPE_TAGS[tag][0])
        cur.shapes.append(list(meta["shape"]))
    return buckets


def join_group(
    address: str,
    port: int,
    world_size: int,
    rank: int,
    group_name: str,
    backend: str,
    timeout: float,
):
    """A process group beside the default one (which DeepSpeed owns), formed like SGLang's
    side of a weight-update group so that both meet: rendezvous on tcp://address:port (rank 0
    hosts the store), keys prefixed with `group_name`. The private torch helpers are the ones
    SGLang, OpenRLHF and verl use for the same purpose; there is no public API for a second
    world."""
    from torch.distributed.distributed_c10d import (
        Backend,
        PrefixStore,
        _new_process_group_helper,
        _world,
        rendezvous,
    )

    wait = timedelta(seconds=timeout)
    store, rank, world_size = next(
        rendezvous(f"tcp://{address}:{port}", rank, world_size, timeout=wait)
    )
    store.set_timeout(wait)
    store = PrefixStore(group_name, store)
    # A dead peer must fail this group only: 2 = abort the communicator, keep the process
    # (torch's default 3 ends the learner). Read when the group is constructed.
    saved = os.environ.get("TORCH_NCCL_ASYNC_ERROR_HANDLING")
    os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "2"
    try:
        pg, _ = _new_process_group_helper(
            world_size, rank, [], Backend(backend), store, group_name=group_name, timeout=wait
        )
    finally:
        if saved is None:
            os.environ.pop("TORCH_NCCL_ASYNC_ERROR_HANDLING", None)
        else:
            os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = saved
    _world.pg_group_ranks[pg] = {i: i for i in range(world_size)}
    return pg


class _Job:
    """One version's broadcast; `done` lets the weights store recycle the blob after it,
    like a finished zmq send."""

    def __init__(self, pub, buckets: list[Bucket]):
        self.pub, self.buckets = pub, buckets
        self.done = False


# One broadcast at a time from this process, over every channel; the staging buffer of the
# current device is shared under it.
_BROADCAST_LOCK = threading.Lock()
_STAGING: dict[str, torch.Tensor] = {}


class NcclChannel:
    """The learner's end of one generator's weight-update group."""

    def __init__(
        self,
        generator_id: str,
        address: str,
        world_size: int,
        backend: str,
        device: str,
        timeout: float,
        serial: int,
        on_done=None,
    ):
        self.generator_id = generator_id
        self.address = address
        self.port = free_port(address)
        self.world_size = world_size
        self.backend = backend
        # gloo broadcasts straight from the host blob; nccl from a GPU staging buffer.
        self.device = device if backend == "nccl" else "cpu"
        self.group_name = f"asyncrl-{generator_id}-{serial}"
        self.timeout = timeout
        self.on_done = on_done  # (channel, seconds, bytes, ok) after each job
        self.failed = ""
        self._jobs: queue.Queue = queue.Queue()
        self._pg = None
        self._thread = threading.Thread(target=self._run, name=f"nccl-{generator_id}", daemon=True)
        self._thread.start()

    def submit(self, pub, buckets: list[Bucket]) -> None:
        job = _Job(pub, buckets)
        pub.sent(job)  # the blob stays unrecycled until the broadcast is over
        self._jobs.put(job)

    def close(self, wait: float = 0.0) -> None:
        """Stop after the queued broadcasts and tear the group down; `wait` seconds for that
        (a process must not exit while a group's threads are being destroyed: it aborts)."""
        self._jobs.put(None)
        if wait:
            self._thread.join(wait)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            self._pg = join_group(
                self.address,
                self.port,
                self.world_size,
                0,
                self.group_name,
                self.backend,
                self.timeout,
            )
            logger.info("weight-update group %s formed", self.group_name)
        except Exception as exc:  # the generator never joined: this channel is dead, say why
            self.failed = f"group {self.group_name} not formed: {exc}"
            logger.warning("%s", self.failed)
            if self.on_done is not None:
                self.on_done(self, 0.0, 0, False)
        while (job := self._jobs.get()) is not None:
            t = time.time()
            ok = False
            try:
                if self.failed:
                    continue  # the pull that finds `failed` tells the generator to join again
                self._broadcast(job)
                ok = True
            except Exception as exc:  # a generator gone mid-broadcast: drop its channel only
                self.failed = f"broadcast of version {job.pub.version} failed: {exc}"
                logger.warning("%s %s", self.group_name, self.failed)
            finally:
                job.done = True
            if self.on_done is not None and (ok or self.failed):
                sent = sum(b.end - b.start for b in job.buckets)
                self.on_done(self, time.time() - t, sent if ok else 0, ok)
        self._destroy()

    def _broadcast(self, job: _Job) -> None:
        blob = job.pub.blob
        wait = timedelta(seconds=self.timeout)
        with _BROADCAST_LOCK:
            for b in job.buckets:
                src = torch.frombuffer(
                    blob, dtype=torch.uint8, count=b.end - b.start, offset=b.start
                )
                if self.device == "cuda":
                    staging = _staging(self.device, b.end - b.start)
                    staging.copy_(src)
                    src = staging
                work = dist.broadcast(src, src=0, group=self._pg, async_op=True)
                work.wait(timeout=wait)
            if self.device == "cuda":
                torch.cuda.synchronize()

    def _destroy(self) -> None:
        if self._pg is None:
            return
        try:
            dist.destroy_process_group(self._pg)
        except Exception as exc:  # teardown of a group whose peer is gone; nothing to save
            logger.debug("destroying %s: %s", self.group_name, exc)
        self._pg = None


def _staging(device: str, nbytes: int) -> torch.Tensor:
    buf = _STAGING.get(device)
    if buf is None or buf.numel() < nbytes:
        buf = _STAGING[device] = torch.empty(nbytes, dtype=torch.uint8, device=device)
    return buf[:nbytes]

"""`asyncrl bench`'s weights figures: publishing a state (serialise + digest, streamed to 2
generator processes that fetch chunks as they are written, verify and deserialise) against
fetching the same bytes as raw chunks over the same sockets, alternating trials in one run.
Steady state is several versions in a row with buffers recycled as in a run; the first
publish, which allocates them, is reported apart (`weights_ratio_cold`).
"""

from __future__ import annotations

import statistics
import threading
import time

import zmq

from asyncrl.protocol.messages import WeightsRequest
from asyncrl.protocol.sockets import SocketFactory, recv, send


def _serve_chunks(router: zmq.Socket, source, stop: threading.Event, wrapped: bool):
    """Answer chunk requests like the hub does (wrapped: `source` is the WeightsStore, sends
    are tracked so blobs can be recycled) or with bare bytes (raw: `source` is a chunk list)."""
    while not stop.is_set():
        if not router.poll(1 if wrapped and source.deferred else 50):
            if wrapped:
                source.serve_deferred(router)
            continue
        if wrapped:
            prefix, msg = recv(router, routed=True)
            source.serve(router, prefix, msg)
            source.serve_deferred(router)
        else:
            ident, index = router.recv_multipart()
            router.send_multipart([ident, source[int(index)]], copy=False)


def _fetch(dealer: zmq.Socket, version: int, n_chunks: int, assembler=None) -> str:
    """The generator side: keep the worker's window of requests outstanding; with an
    assembler, copy and hash each chunk on arrival (the steps of
    `generators.fetchers.zmq.ChunkFetcher.fetch`), else only receive. Returns the digest the last
    chunk carried ("" for raw chunks)."""
    from asyncrl.generators.weights import FETCH_WINDOW

    digest = ""
    received = next_index = outstanding = 0
    while received < n_chunks:
        while outstanding < FETCH_WINDOW and next_index < n_chunks:
            if assembler is not None:
                send(dealer, WeightsRequest(version, next_index))
            else:
                dealer.send(str(next_index).encode())
            next_index += 1
            outstanding += 1
        if assembler is not None:
            _, msg = recv(dealer)
            assembler.add(msg.index, msg.data)
            digest = msg.digest or digest
        else:
            dealer.recv(copy=False)
        received += 1
        outstanding -= 1
    return digest


def _fetch_process(endpoint: str, rounds: int, wrapped: bool, jobs, done, ready, go):
    """A generator: fetch `rounds` versions, each announced as (version, size, chunks) on
    `jobs`, reusing the previous version's buffer as the worker does."""
    from asyncrl.generators.weights import ChunkAssembler, keep_chunk_memory, verify_and_decode

    keep_chunk_memory()  # as `generator_main` does (both sides, so they differ only in the path)
    ctx = zmq.Context()
    dealer = SocketFactory(context=ctx).socket(zmq.DEALER, server=False)
    dealer.connect(endpoint)
    ready.wait()
    go.wait()
    spare = None
    for _ in range(rounds):
        version, size, n_chunks = jobs.get()
        if wrapped:
            assembler = ChunkAssembler(size, n_chunks, reuse=spare)
            digest = _fetch(dealer, version, n_chunks, assembler)
            spare = assembler.finish(digest)
            verify_and_decode(spare, digest)  # the digest was checked on arrival: decode only
        else:
            _fetch(dealer, version, n_chunks)
        done.wait()
    dealer.close(0)
    ctx.term()


def _weights_trial(ctx, tensors, raw_blob: bytes | None, generators: int, rounds: int):
    """`rounds` publishes to `generators` fetcher processes, timed one by one. With
    `raw_blob` None: the real path as `ZmqPublisher` takes it (announce, serialise into a
    recycled buffer with its checksum while generators fetch the chunks written so far,
    WeightsChunk messages, assemble into the previous buffer, verify, decode); otherwise raw
    chunks of the given bytes over the same sockets and window. Returns the per-round seconds
    and the last blob."""
    import multiprocessing as mp

    from asyncrl.learner.weights import BlobWriter, WeightsStore

    chunk_bytes = 4 << 20
    wrapped = raw_blob is None
    store = WeightsStore(chunk_bytes)
    chunks = []
    if not wrapped:
        view = memoryview(raw_blob)
        chunks = [view[i : i + chunk_bytes] for i in range(0, len(raw_blob), chunk_bytes)]
    factory = SocketFactory(context=ctx)
    routers = [factory.socket(zmq.ROUTER, server=True) for _ in range(generators)]
    endpoints = [f"tcp://127.0.0.1:{r.bind_to_random_port('tcp://127.0.0.1')}" for r in routers]
    stop = threading.Event()
    source = store if wrapped else chunks
    servers = [
        threading.Thread(target=_serve_chunks, args=(r, source, stop, wrapped)) for r in routers
    ]
    for th in servers:
        th.start()
    mpc = mp.get_context("fork")
    jobs = [mpc.Queue() for _ in endpoints]
    done = mpc.Barrier(generators + 1)
    ready, go = mpc.Barrier(generators + 1), mpc.Event()
    procs = [
        mpc.Process(target=_fetch_process, args=(e, rounds, wrapped, q, done, ready, go))
        for e, q in zip(endpoints, jobs, strict=True)
    ]
    for p in procs:
        p.start()
    ready.wait()
    go.set()
    times, blob = [], raw_blob
    first = next(iter(tensors.values()))
    specs = {n: (tuple(t.shape), t.dtype) for n, t in tensors.items()}
    for version in range(1, rounds + 1):
        first.add_(1.0)  # a new version each round (outside the timing)
        t = time.perf_counter()
        if wrapped:
            writer = BlobWriter(specs, store.spare())
            pub = store.begin(version, writer)
            for q in jobs:
                q.put((version, len(pub.blob), pub.chunks))
            for name, tensor in tensors.items():
                writer.write(name, tensor)
            blob = writer.finish()
            store.complete(pub)
        else:
            for q in jobs:
                q.put((version, len(raw_blob), len(chunks)))
        done.wait()
        times.append(time.perf_counter() - t)
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"bench child failed with exit code {p.exitcode}")
    stop.set()
    for th in servers:
        th.join()
    for r in routers:
        r.close(0)
    return times, blob


def bench_weights(quick: bool, generators: int = 2) -> dict:
    """Steady state (a version is published after every step, so buffers are recycled): the
    ratio is the median over the rounds after the first three of each trial, by which time
    the learner has its three buffers (latest, previous, one to write) and each generator its
    one. The first round, which allocates, is reported as `weights_ratio_cold`."""
    import torch

    size_mb = 100 if quick else 500
    per = 4 << 20  # 4 MiB fp32 tensors
    tensors = {f"layer{i}.weight": torch.randn(per // 4) for i in range(size_mb * (1 << 20) // per)}
    warm, rounds = 3, 5 if quick else 6
    ctx = zmq.Context()
    published, raw = [], []
    blob = None
    for _ in range(2 if quick else 3):
        times, blob = _weights_trial(ctx, tensors, None, generators, rounds)
        published.append(times)
        raw.append(_weights_trial(ctx, tensors, bytes(blob), generators, rounds)[0])
    ctx.term()
    total = len(blob) * generators
    steady_pub = statistics.median(t for ts in published for t in ts[warm:])
    steady_raw = statistics.median(t for ts in raw for t in ts[warm:])
    cold_pub = statistics.median(ts[0] for ts in published)
    cold_raw = statistics.median(ts[0] for ts in raw)
    return {
        "weights_ratio": round(steady_raw / steady_pub, 3),
        "weights_ratio_cold": round(cold_raw / cold_pub, 3),
        "weights_state_mb": round(len(blob) / 1e6, 1),
        "weights_publish_load_mb_per_s": round(total / steady_pub / 1e6, 1),
        "weights_raw_mb_per_s": round(total / steady_raw / 1e6, 1),
    }

"""Weight publishing: serialise the policy once per version and serve it in chunks.

The learner never pushes weights at generators: it announces `(version, digest, size)` on the
PUB socket and each generator pulls chunks over the control socket at its own pace, so a slow
generator never blocks the learner. Serialisation is safetensors (no pickle); the digest lets
the generator verify what it loads. With the zmq transport a version is streamed: announced
without a digest as it starts to be written, chunks served as they become final, the digest
sent with the last chunk and in a second announcement (see `WeightsStore`).

Buffers are recycled: a 500 MB bytearray costs more to allocate (page faults while it is
zeroed, ~1.4 GB/s) than to fill (~13 GB/s once its pages exist), and a version is published
after every step. A retired buffer is reused only once ZeroMQ reports that no send still
reads from it.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
import zmq

from asyncrl.protocol.blob import DTYPE_TAGS, Checksum, Serialized, digest_of, encode_header
from asyncrl.protocol.messages import WeightsChunk, WeightsRequest
from asyncrl.protocol.sockets import send

# torch dtype -> safetensors tag, from the format's table.
_TAGS = {getattr(torch, name): tag for tag, (name, _) in DTYPE_TAGS.items()}


class BlobWriter:
    """Writes the safetensors encoding of a state tensor by tensor: the layout (names,
    shapes, dtypes) first, then each tensor's bytes in that order as it becomes available.
    Under ZeRO-3 a parameter is copied here while it is gathered, so the publisher never
    holds a second full copy of the model. The running digest is fed as the bytes are
    copied (`Checksum.copy`). `reuse`: a buffer nobody reads any more
    (`WeightsStore.spare`), written over when the size fits."""

    def __init__(self, specs: dict[str, tuple[tuple[int, ...], torch.dtype]], reuse=None) -> None:
        prefix, self.header, data_bytes = encode_header(
            {name: (_TAGS[dtype], list(shape)) for name, (shape, dtype) in specs.items()}
        )
        size = len(prefix) + data_bytes
        fits = isinstance(reuse, Serialized) and len(reuse) == size
        self.out = reuse if fits else Serialized(size)
        self.out[: len(prefix)] = prefix
        self.base = len(prefix)
        self._order = iter(self.header)
        self._view = memoryview(self.out)
        self._hasher = Checksum()
        self._hasher.update(self._view[: self.base])
        # Bytes of `out` that are final: a streamed version's chunks below it may be served.
        self.written = self.base

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Copy the next tensor of the layout (the running hash needs them in order)."""
        expected = next(self._order, None)
        if name != expected:
            raise ValueError(f"wrote {name}, but the layout expects {expected} next")
        meta = self.header[name]
        if list(tensor.shape) != meta["shape"] or _TAGS[tensor.dtype] != meta["dtype"]:
            raise ValueError(f"{name}: {tensor.dtype} {tuple(tensor.shape)} is not its layout")
        begin, end = (self.base + x for x in meta["data_offsets"])
        if begin == end:
            return
        src = tensor.detach()
        if src.device.type == "cpu" and src.is_contiguous():
            # Not torch's copy_: for this it costs twice the CPU time of a memcpy (it spreads
            # over threads and reads each destination line before writing it).
            self._hasher.copy(self._view[begin:end], src.reshape(-1).view(torch.uint8).numpy())
        else:  # a device tensor or a strided view: torch copies, then hash what landed
            dst = torch.frombuffer(self.out, dtype=src.dtype, count=src.numel(), offset=begin)
            dst.copy_(src.reshape(-1))
            self._hasher.update(self._view[begin:end])
        self.written = end

    def finish(self) -> Serialized:
        missing = next(self._order, None)
        if missing is not None:
            raise ValueError(f"{missing} was never written")
        self._view.release()
        self.out.digest = self._hasher.hexdigest()
        return self.out


def serialize_named_tensors(
    tensors: dict[str, torch.Tensor], reuse: bytearray | None = None
) -> Serialized:
    """The safetensors encoding of `tensors` (one copy each; `safetensors.torch.save` copies
    twice, which dominated publish time). The blob is also the snapshot that lets training
    go on while generators fetch."""
    writer = BlobWriter({n: (tuple(t.shape), t.dtype) for n, t in tensors.items()}, reuse)
    for name, t in tensors.items():
        writer.write(name, t)
    return writer.finish()


@dataclass
class PublishedWeights:
    version: int
    blob: bytes
    digest: str  # "" while `writer` still writes it
    chunk_bytes: int
    # zmq MessageTrackers of zero-copy sends of this blob's chunks (see WeightsStore.spare).
    sends: list = field(default_factory=list)
    writer: BlobWriter | None = None  # set while the version is streamed

    @property
    def chunks(self) -> int:
        return max(1, -(-len(self.blob) // self.chunk_bytes))

    def chunk(self, index: int) -> memoryview:
        start = index * self.chunk_bytes
        return memoryview(self.blob)[start : start + self.chunk_bytes]

    def available(self, index: int) -> bool:
        """Whether chunk `index` is final. The last one waits for the digest it carries."""
        writer = self.writer  # read once: the publishing thread clears it when done
        if writer is None:
            return True
        return index < self.chunks - 1 and (index + 1) * self.chunk_bytes <= writer.written

    def sent(self, tracker) -> None:
        """Record a zero-copy send of a chunk; the blob is not reused until it is done."""
        self.sends = [t for t in self.sends if not t.done]
        self.sends.append(tracker)

    def idle(self) -> bool:
        return all(t.done for t in self.sends)


# Chunk requests a store holds for chunks not written yet; beyond it they are answered
# `missing` (each generator has a handful outstanding: this is a bound against a runaway peer).
MAX_DEFERRED = 16384
# Chunk requests one connection may have outstanding (held, or sent and still queued in ZeroMQ
# towards it); generators keep a window of a few. Past it a request is refused: a peer that
# does not read what it asked for cannot make the learner queue more for it.
MAX_OUTSTANDING_PER_PEER = 32


def send_now(sock, msg, prefix: list, track: bool = False):
    """Send a reply on a ROUTER without blocking and learn whether it was queued: the tracker
    (or True untracked), or None when the peer's queue is full or the peer has gone. Without
    ROUTER_MANDATORY, ZeroMQ drops such a message silently and the send looks successful; it is
    set around this send only, so the loop's other replies keep the socket's drop semantics."""
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    try:
        return send(sock, msg, prefix, flags=zmq.NOBLOCK, track=track) or True
    except zmq.Again:
        return None
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EHOSTUNREACH:
            return None
        raise
    finally:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)


class WeightsStore:
    """The latest published version plus the one before it (for fetches in progress), and
    retired blobs waiting to be reused.

    A version is either put whole (`put`: the disk and nccl transports need the finished
    file or plan) or streamed (`begin` ... `complete`): announced as its serialisation
    starts, so generators fetch the first chunks while the learner still copies the last
    ones. Requests for chunks not yet written are held and answered by `serve_deferred`."""

    def __init__(self, chunk_bytes: int):
        self.chunk_bytes = chunk_bytes
        self._lock = threading.Lock()
        self.latest: PublishedWeights | None = None
        self._previous: PublishedWeights | None = None
        self._retired: PublishedWeights | None = None  # the version before `_previous`
        self._deferred: list[tuple] = []  # (socket, routing prefix, request)
        self._deferred_by_peer: Counter[bytes] = Counter()
        self._sends_by_peer: dict[bytes, list] = {}  # trackers of chunk sends not yet done
        self.not_sent = 0  # replies ZeroMQ could not queue (peer queue full, or peer gone)

    def put(self, version: int, blob: bytes) -> PublishedWeights:
        return self._rotate(PublishedWeights(version, blob, digest_of(blob), self.chunk_bytes))

    def begin(self, version: int, writer: BlobWriter) -> PublishedWeights:
        """Publish `writer`'s blob while it is written; `complete` once it is finished."""
        pub = PublishedWeights(version, writer.out, "", self.chunk_bytes, writer=writer)
        return self._rotate(pub)

    def complete(self, pub: PublishedWeights) -> None:
        """After `pub.writer.finish()`: the digest is known, the last chunk may go out."""
        if pub.writer is None or not pub.writer.out.digest:
            raise ValueError(f"version {pub.version} is not a finished stream")
        pub.digest = pub.writer.out.digest
        pub.writer = None

    def _rotate(self, pub: PublishedWeights) -> PublishedWeights:
        with self._lock:
            self._retired, self._previous, self.latest = self._previous, self.latest, pub
        return pub

    def spare(self) -> bytearray | None:
        """A retired blob no send reads any more, to serialise the next version into (a
        chunk sent from a reused blob would be corrupt, and rejected by its digest)."""
        with self._lock:
            pub = self._retired
            if pub is None or not pub.idle():
                return None
            self._retired = None
            return pub.blob

    def get(self, version: int) -> PublishedWeights | None:
        with self._lock:
            return self._held(version)

    @property
    def deferred(self) -> bool:
        return bool(self._deferred)

    def outstanding(self, peer: bytes) -> int:
        """Requests of connection `peer` held, or answered and still queued towards it."""
        sends = [t for t in self._sends_by_peer.get(peer, ()) if not t.done]
        if sends:
            self._sends_by_peer[peer] = sends
        else:
            self._sends_by_peer.pop(peer, None)
        return len(sends) + self._deferred_by_peer[peer]

    def serve(self, sock, prefix: list, req: WeightsRequest) -> int:
        """Answer a chunk request on a ROUTER socket: the chunk sent without a copy (tracked,
        so its blob is reused only once ZeroMQ is done with it), or `missing` when the version
        was superseded or the index is out of range; held for `serve_deferred` when the chunk
        is not written yet. Returns the bytes ZeroMQ took (a reply it could not queue counts
        in `not_sent`, not here). Call from the socket's thread only."""
        pub = self.get(req.version)
        if pub is not None and 0 <= req.index < pub.chunks and not pub.available(req.index):
            with self._lock:
                if len(self._deferred) < MAX_DEFERRED:
                    self._deferred.append((sock, prefix, req))
                    self._deferred_by_peer[prefix[0]] += 1
                    return 0
            pub = None
        if pub is None or not 0 <= req.index < pub.chunks:
            gone = WeightsChunk(req.version, req.index, np.zeros(0, np.uint8), missing=True)
            if send_now(sock, gone, prefix) is None:
                self.not_sent += 1
            return 0
        data = np.frombuffer(pub.chunk(req.index), np.uint8)
        digest = pub.digest if req.index == pub.chunks - 1 else ""
        reply = WeightsChunk(req.version, req.index, data, digest=digest)
        tracker = send_now(sock, reply, prefix, track=True)
        if tracker is None:
            self.not_sent += 1
            return 0
        pub.sent(tracker)
        self._sends_by_peer.setdefault(prefix[0], []).append(tracker)
        return len(data)

    def serve_deferred(self, sock) -> int:
        """Answer the held requests on `sock` whose chunks are written by now (or whose
        version is gone). Returns the bytes served."""
        with self._lock:
            due, keep = [], []
            for item in self._deferred:
                pub = self._held(item[2].version) if item[0] is sock else None
                ready = item[0] is sock and (pub is None or pub.available(item[2].index))
                (due if ready else keep).append(item)
            self._deferred = keep
            for _, prefix, _ in due:
                self._deferred_by_peer[prefix[0]] -= 1
                if self._deferred_by_peer[prefix[0]] <= 0:
                    del self._deferred_by_peer[prefix[0]]
        return sum(self.serve(s, prefix, req) for s, prefix, req in due)

    def _held(self, version: int) -> PublishedWeights | None:
        for pub in (self.latest, self._previous):
            if pub is not None and pub.version == version:
                return pub
        return None

"""A running learner survives a flood of malformed frames and counts every one.

10,000 frames of garbage, truncated headers, wrong dtypes, bogus leases and weight-chunk
requests from a peer that never said hello go at the control and rollouts endpoints while
`asyncrl local` trains; afterwards the learner must be alive, its policy version must have
advanced, and the drops and refusals must show in its metrics.
"""

from __future__ import annotations

import random
import re
import time

import msgpack
import zmq

from asyncrl.protocol.codec import encode
from asyncrl.protocol.messages import LeaseRequest, WeightsRequest
from tests.integration.conftest import (
    UNTIL_STOPPED,
    next_event,
    scrape,
    start_cli,
    stop_run,
    stranger_rollout,
    wait_version,
)

N_FRAMES = 10_000


def _sum(metrics: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in metrics.items() if re.match(re.escape(prefix) + r"(\{|$)", k))


def _hostile_frames(rng: random.Random) -> list[list[bytes]]:
    """A mix of malformed multipart messages (each a list of frames)."""
    good = stranger_rollout("f" * 32)
    chunk_request = [bytes(f) for f in encode(WeightsRequest(0, 0))]
    header = msgpack.unpackb(good[0], raw=False)
    kinds = []
    for i in range(N_FRAMES):
        k = i % 9
        if k == 0:
            kinds.append([rng.randbytes(rng.randint(0, 64))])
        elif k == 1:
            kinds.append([good[0][: rng.randint(0, len(good[0]) - 1)], *good[1:]])
        elif k == 2:
            h = dict(header, a=[[n, "float64", s] for n, _, s in header["a"]])
            kinds.append([msgpack.packb(h), *good[1:]])
        elif k == 3:
            kinds.append([good[0], *good[1:-1]])  # an array frame missing
        elif k == 4:
            kinds.append(good)  # well formed, but a lease that was never issued
        elif k == 5:
            kinds.append([msgpack.packb({"v": 1, "t": "lease_request", "f": {"x": 1}, "a": []})])
        elif k == 6:
            kinds.append([msgpack.packb(msgpack.ExtType(1, b"\x00" * 8))])
        elif k == 7:
            kinds.append([msgpack.packb([1] * 5000)])
        else:
            kinds.append(chunk_request)  # no hello on this connection: refused, not served
    return kinds


def test_flood_of_malformed_frames_is_counted_and_training_continues(small_overrides, tmp_path):
    log = tmp_path / "local.log"
    proc = start_cli(
        [
            "local",
            *small_overrides,
            UNTIL_STOPPED,  # the hub must be serving until every frame is counted
            "local.generators=1",
            "buffer.max_staleness=2",
        ],
        log,
    )
    try:
        started = next_event(proc, "started")
        control, rollouts = started["endpoints"]["control"], started["endpoints"]["rollouts"]
        metrics_url = started["metrics"]["learner"]
        ctx = zmq.Context()
        dealer = ctx.socket(zmq.DEALER)
        push = ctx.socket(zmq.PUSH)
        for sock in (dealer, push):
            sock.setsockopt(zmq.SNDTIMEO, 30_000)  # a hub that stopped reading fails the test
        dealer.connect(control)
        push.connect(rollouts)
        rng = random.Random(0)
        for i, frames in enumerate(_hostile_frames(rng)):
            (dealer if i % 2 else push).send_multipart(frames)
        # The control socket still answers a well-formed request from a stranger.
        dealer.send_multipart([bytes(f) for f in encode(LeaseRequest("probe", -1))])
        deadline = time.time() + 60
        got_reply = False
        while time.time() < deadline and not got_reply:
            if dealer.poll(1000):
                frames = dealer.recv_multipart()
                got_reply = b"lease_denied" in frames[0] or b"lease" in frames[0]
        assert got_reply, "control socket stopped answering"
        # Wait until every frame was processed and counted.
        deadline = time.time() + 120
        while time.time() < deadline:
            m = scrape(metrics_url)
            counted = (
                _sum(m, "asyncrl_malformed_messages_total")
                + _sum(m, "asyncrl_rollouts_dropped_total")
                + _sum(m, "asyncrl_weight_requests_refused_total")
            )
            if counted >= N_FRAMES:
                break
            time.sleep(0.5)
        assert counted >= N_FRAMES, counted
        # The well-formed groups under an id never issued are `unknown_lease`, not malformed
        # and not `duplicate`; chunk requests without hello are refused, none served to it.
        assert m['asyncrl_rollouts_dropped_total{reason="unknown_lease"}'] >= N_FRAMES // 9 // 2
        assert m['asyncrl_weight_requests_refused_total{reason="no_hello"}'] >= N_FRAMES // 9 // 2
        assert (
            m['asyncrl_lease_messages_refused_total{message="lease_request",reason="no_hello"}']
            >= 1
        )
        dealer.close(0)
        push.close(0)
        ctx.term()
        # Training goes on after the flood.
        flooded_at = wait_version(metrics_url, 0, proc)
        wait_version(metrics_url, flooded_at + 5, proc)
        summary = stop_run(proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert summary["policy_version"] >= flooded_at + 5

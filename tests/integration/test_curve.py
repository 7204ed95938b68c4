"""CurveZMQ on: an authorised generator trains, an unauthorised peer gets nothing through.

The intruder knows the server's public key (it is public) and has a well-formed key pair of
its own that the learner never listed; a plaintext peer has no keys at all. Neither receives a
welcome, a lease or a weights announcement, and neither's rollouts are counted.
"""

from __future__ import annotations

import urllib.request

import zmq

from asyncrl.protocol.codec import decode, encode
from asyncrl.protocol.messages import Hello
from asyncrl.protocol.sockets import SocketFactory, create_curve_keys, load_curve_keys
from tests.integration.conftest import (
    UNTIL_STOPPED,
    next_event,
    scrape,
    start_cli,
    stop_run,
    stranger_rollout,
    wait_version,
)


def _received(metrics_url: str) -> float:
    return scrape(metrics_url).get("asyncrl_rollouts_received_total", 0.0)


def _probe(factory_or_ctx, endpoints: dict) -> dict[str, int]:
    """Try every endpoint for a few seconds; count what came back."""
    if isinstance(factory_or_ctx, SocketFactory):
        dealer = factory_or_ctx.socket(zmq.DEALER, server=False)
        push = factory_or_ctx.socket(zmq.PUSH, server=False)
        sub = factory_or_ctx.socket(zmq.SUB, server=False)
    else:
        dealer = factory_or_ctx.socket(zmq.DEALER)
        push = factory_or_ctx.socket(zmq.PUSH)
        sub = factory_or_ctx.socket(zmq.SUB)
    for s in (dealer, push, sub):
        s.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    dealer.connect(endpoints["control"])
    push.connect(endpoints["rollouts"])
    sub.connect(endpoints["weights"])
    got = {"replies": 0, "announcements": 0}
    for _ in range(20):
        # With IMMEDIATE (the factory's default) a send without a completed handshake fails
        # at once: that is the expected outcome for a rejected peer, not an error.
        for sock, frames in (
            (dealer, [bytes(f) for f in encode(Hello("intruder", "hf", 0))]),
            (push, stranger_rollout("1" * 32)),
        ):
            try:
                sock.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:
                pass
        if dealer.poll(100):
            decode(dealer.recv_multipart())
            got["replies"] += 1
        if sub.poll(100):
            sub.recv_multipart()
            got["announcements"] += 1
    for s in (dealer, push, sub):
        s.close(0)
    return got


def test_authorised_generator_trains_and_intruders_get_nothing(small_overrides, tmp_path):
    keys, rogue = tmp_path / "keys", tmp_path / "rogue"
    create_curve_keys(str(keys), ["gen"])
    create_curve_keys(str(rogue), ["intruder"])
    # The intruder holds the real server's public key and a valid (unlisted) key pair.
    (rogue / "server.key").write_bytes((keys / "server.key").read_bytes())
    log = tmp_path / "local.log"
    proc = start_cli(
        [
            "local",
            *small_overrides,
            UNTIL_STOPPED,  # the hub must be serving through both probes
            "local.generators=1",
            f"security.curve_dir={keys}",
            "security.client_name=gen",
        ],
        log,
    )
    try:
        started = next_event(proc, "started")
        url = started["metrics"]["learner"]
        before = _received(url)
        ctx = zmq.Context()
        intruder = SocketFactory(
            context=ctx, curve=load_curve_keys(str(rogue), "client", "intruder")
        )
        assert _probe(intruder, started["endpoints"]) == {"replies": 0, "announcements": 0}
        assert _probe(ctx, started["endpoints"]) == {"replies": 0, "announcements": 0}
        ctx.term()
        # The authorised generator kept training through both probes.
        probed_at = wait_version(url, 1, proc)
        wait_version(url, probed_at + 3, proc)
        # Rollouts received grew only by what the authorised generator sent: the bogus
        # groups (generator_id "intruder") never reached intake, so no duplicate drops.
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        assert 'asyncrl_rollouts_dropped_total{reason="duplicate"} 0.0' in text or (
            'reason="duplicate"' not in text
        )
        assert _received(url) >= before
        # The unlisted key was refused by the authenticator and counted (protocol.auth).
        assert 'asyncrl_auth_failures_total{reason="unknown_key"} 0.0' not in text
        assert 'asyncrl_auth_failures_total{reason="unknown_key"}' in text
        summary = stop_run(proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert summary["policy_version"] >= probed_at + 3
    assert summary["generators_seen"] == ["generator-0"]

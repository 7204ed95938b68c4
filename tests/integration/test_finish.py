"""A run that reaches its end says so: the learner announces `Finished`, a separately
launched generator exits 0 on it (instead of reconnecting forever), and both serve
`asyncrl_run_finished 1` for their linger period before exiting 0, so alerting tells a finish
from a crash. Also: every role binds its metrics on 127.0.0.1 by default, the learner's
independently of learner.bind_host, and /healthz is 200 while the run goes on."""

from __future__ import annotations

import time
import urllib.request

from asyncrl.protocol.sockets import free_port
from tests.integration.conftest import next_event, scrape, start_cli

LINGER = 4.0


def _finished(url: str) -> float | None:
    try:
        return scrape(url, timeout=2).get("asyncrl_run_finished")
    except OSError:
        return None


def _wait_for(predicate, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(1.0)  # a scrape costs the learner CPU: do not slow the run down
    return False


def test_learner_and_separate_generator_both_exit_0_at_the_end(small_overrides, tmp_path):
    ports = set()
    while len(ports) < 5:
        ports.add(free_port())
    control, rollouts, weights, l_metrics, g_metrics = sorted(ports)
    common = [
        *small_overrides,
        f"learner.control_port={control}",
        f"learner.rollouts_port={rollouts}",
        f"learner.weights_port={weights}",
        f"learner.metrics_port={l_metrics}",
        "learner.bind_host=0.0.0.0",  # ZeroMQ opened up; /metrics must stay on 127.0.0.1
        f"learner.metrics_linger_seconds={LINGER}",
        # The generator is told first (the learner then saves and exports): it lingers longer.
        f"generator.metrics_linger_seconds={2 * LINGER}",
        "train.steps=2",
    ]
    learner = start_cli(["learner", *common], tmp_path / "learner.log")
    generator = None
    try:
        ready = next_event(learner, "learner_ready")
        assert ready["metrics"] == f"http://127.0.0.1:{l_metrics}/metrics"
        l_url = f"http://127.0.0.1:{l_metrics}/metrics"
        # Healthy while the run goes on (asked before any generator: two steps can be over
        # within a second of one joining, and then /healthz says "finished").
        with urllib.request.urlopen(l_url.replace("/metrics", "/healthz"), timeout=5) as r:
            assert r.status == 200 and r.read().startswith(b"ok version=0")
        generator = start_cli(
            [
                "generator",
                *common,
                f"generator.learner=tcp://127.0.0.1:{control}",
                f"generator.metrics_port={g_metrics}",
                "generator.generator_id=gen-a",
                "generator.reconnect_seconds=3",
            ],
            tmp_path / "generator.log",
        )
        g_url = f"http://127.0.0.1:{g_metrics}/metrics"
        # Up (0 while it works; 1 already if it was told of the finish before this looked).
        assert _wait_for(lambda: _finished(g_url) is not None, 120), "generator never served"
        # Both say the run finished while they linger...
        seen: set[str] = set()

        def both_finished() -> bool:
            seen.update(name for name, url in (("l", l_url), ("g", g_url)) if _finished(url) == 1)
            return seen == {"l", "g"}

        assert _wait_for(both_finished, 600), f"only {seen} said the run finished"
        # ...then exit 0 by themselves.
        assert learner.wait(timeout=60) == 0, (tmp_path / "learner.log").read_text()[-3000:]
        assert generator.wait(timeout=60) == 0, (tmp_path / "generator.log").read_text()[-3000:]
    finally:
        for p in (learner, generator):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    log = (tmp_path / "generator.log").read_text()
    assert "the learner finished its run at version 2; exiting" in log
    assert "reconnecting" not in log
    # Nothing listened beyond loopback: the metrics ports are not reachable on another address.
    import socket

    host_ip = socket.gethostbyname(socket.gethostname())
    if not host_ip.startswith("127."):
        for port in (l_metrics, g_metrics):
            s = socket.socket()
            s.settimeout(1)
            assert s.connect_ex((host_ip, port)) != 0
            s.close()

"""The metrics/health HTTP server (`launch/serve.py`) holds against idle and slow clients:
connections cost no thread, a request must arrive whole within the timeout, a full server
drops its oldest unfinished connection for a newcomer, a hung health check answers 503, and
optional basic auth and TLS work. Real sockets on loopback, one process."""

from __future__ import annotations

import base64
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from asyncrl.launch.serve import HttpOptions, ProcessMetrics, start_metrics_server


def registry() -> CollectorRegistry:
    r = CollectorRegistry()
    Counter("asyncrl_test_things", "Things.", registry=r).inc(3)
    return r


def get(url: str, timeout: float = 5.0, headers: dict | None = None, context=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def server():
    started = []

    def start(health=lambda: (True, "fine"), **opts):
        url, srv = start_metrics_server("127.0.0.1", 0, registry(), health, HttpOptions(**opts))
        started.append(srv)
        return url, srv

    yield start
    for srv in started:
        srv.close()


def test_metrics_health_and_not_found(server):
    url, _ = server(health=lambda: (False, "intake stalled: no group for 700s"))
    code, body = get(url)
    assert code == 200 and "asyncrl_test_things_total 3.0" in body
    assert get(url.replace("/metrics", "/healthz")) == (503, "intake stalled: no group for 700s\n")
    assert get(url.replace("/metrics", "/nope"))[0] == 404


def test_300_idle_connections_cost_no_threads_and_metrics_still_answers(server):
    url, srv = server(timeout=5.0, max_connections=512)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    assert get(url)[0] == 200  # the render pool's threads exist from here on
    threads = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
    try:
        deadline = time.time() + 5
        while srv.connections < 300 and time.time() < deadline:
            time.sleep(0.05)
        assert srv.connections == 300  # all accepted and held...
        assert threading.active_count() <= threads  # ...by no thread of their own
        t = time.time()
        assert get(url, timeout=3)[0] == 200
        assert time.time() - t < 2
    finally:
        for s in idle:
            s.close()


def test_idle_and_slow_connections_are_closed_at_the_timeout(server):
    url, srv = server(timeout=0.5)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    idle = socket.create_connection(("127.0.0.1", port))
    idle.settimeout(3)
    t = time.time()
    assert idle.recv(10) == b""  # closed by the server, no answer
    assert 0.4 < time.time() - t < 2
    # Slowloris: a header line every 0.1 s never completes a request within the 0.5 s
    # timeout, however often it sends.
    slow = socket.create_connection(("127.0.0.1", port))
    slow.sendall(b"GET /metrics HTTP/1.1\r\n")
    t = time.time()
    with pytest.raises(OSError):
        for i in range(40):
            slow.sendall(f"X-Drip-{i}: 1\r\n".encode())
            time.sleep(0.1)
    assert time.time() - t < 2
    slow.close()
    idle.close()


def test_a_full_server_drops_its_oldest_unfinished_connection(server):
    url, srv = server(timeout=30.0, max_connections=10)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    try:
        assert get(url, timeout=3)[0] == 200  # gets in although 20 > 10 are waiting
        assert srv.connections <= 10
    finally:
        for s in idle:
            s.close()


def test_oversize_or_odd_requests_are_closed(server):
    url, _ = server()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    for request in (b"POST /metrics HTTP/1.1\r\n\r\n", b"GET /metrics HTTP/1.1\r\n" + b"X" * 9000):
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(3)
        s.sendall(request)
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass
        s.close()


def test_a_hung_health_check_answers_503_and_the_thread_count_stays_bounded(server):
    release = threading.Event()
    url, _ = server(health=lambda: (release.wait(10), "late"), timeout=0.5)
    threads = threading.active_count()
    health = url.replace("/metrics", "/healthz")
    try:
        for _ in range(4):  # more requests than render threads: none waits past its timeout
            t = time.time()
            code, body = get(health, timeout=3)
            assert code == 503 and "did not answer within 0.5s" in body
            assert time.time() - t < 2
        assert threading.active_count() <= threads + 2  # the pool's two threads at most
    finally:
        release.set()


def test_healthy_gauge_samples_the_check(server):
    r = registry()
    proc = ProcessMetrics(r)
    state = {"ok": False}
    proc.healthy.set_function(lambda: float(state["ok"]))
    url, srv = start_metrics_server("127.0.0.1", 0, r, lambda: (state["ok"], ""))
    try:
        assert "asyncrl_healthy 0.0" in get(url)[1]
        state["ok"] = True
        assert "asyncrl_healthy 1.0" in get(url)[1]
        assert "asyncrl_run_finished 0.0" in get(url)[1]
    finally:
        srv.close()


def test_basic_auth(server, tmp_path):
    creds = tmp_path / "auth"
    creds.write_text("prom:s3cret\n")
    url, _ = server(auth_file=str(creds))
    assert get(url)[0] == 401
    bad = base64.b64encode(b"prom:wrong").decode()
    assert get(url, headers={"Authorization": f"Basic {bad}"})[0] == 401
    good = base64.b64encode(b"prom:s3cret").decode()
    assert get(url, headers={"Authorization": f"Basic {good}"})[0] == 200
    assert get(url.replace("/metrics", "/healthz"))[0] == 401


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_tls(server, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    url, _ = server(certfile=str(cert), keyfile=str(key), timeout=1.0)
    assert url.startswith("https://")
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = False
    code, body = get(url, context=ctx)
    assert code == 200 and "asyncrl_test_things_total" in body
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP: no answer
        get(url.replace("https://", "http://"), timeout=3)


def test_tls_needs_both_files():
    with pytest.raises(ValueError, match="both"):
        start_metrics_server("127.0.0.1", 0, registry(), lambda: (True, ""), HttpOptions("a"))

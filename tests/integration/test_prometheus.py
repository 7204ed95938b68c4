"""A real Prometheus scrapes `asyncrl local` (a learner and two generators).

Its HTTP API shows every target up, the policy advancing, generators producing tokens and a
finite staleness quantile; the shipped alert rules load and evaluate without errors; every
dashboard and alert expression is valid PromQL against the live series; and promtool accepts
each role's live exposition. Skipped where `prometheus` is not installed.
"""

from __future__ import annotations

import json
import math
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.integration.conftest import REPO
from tests.integration.prom import PROMETHEUS, Prometheus
from tests.unit.test_ops import OPS, alert_rules, dashboard_exprs

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="prometheus is not on PATH (Debian/Ubuntu: apt-get install prometheus)",
)
STARTUP_TIMEOUT = 400.0  # `asyncrl local` waits up to 300 s for its generators


def start_local(overrides: list[str], log: Path) -> tuple[subprocess.Popen, queue.Queue]:
    """Start `asyncrl local`; its JSON events arrive on the returned queue (None at EOF)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncrl.launch.cli", "local", *overrides],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    events: queue.Queue = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            line = line.strip()
            if line.startswith("{"):
                try:
                    events.put(json.loads(line))
                except json.JSONDecodeError:
                    pass
        events.put(None)

    threading.Thread(target=read, daemon=True).start()
    return proc, events


def wait_event(events: queue.Queue, name: str, timeout: float, log: Path) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            ev = events.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            ev = None
        if ev is None or time.monotonic() > deadline:
            tail = "\n".join(log.read_text().splitlines()[-40:])
            raise AssertionError(f"no {name!r} event from asyncrl local; its log ends:\n{tail}")
        if ev.get("event") == name:
            return ev


def test_prometheus_scrapes_every_role(small_overrides, tmp_path):
    log = tmp_path / "local.log"
    # Far more steps than the test needs: the run is stopped in `finally`, never by finishing.
    proc, events = start_local([*small_overrides, "train.steps=100000", "local.generators=2"], log)
    prom = None
    try:
        started = wait_event(events, "started", STARTUP_TIMEOUT, log)
        urls = started["metrics"]
        assert set(urls) == {"learner", "generator-0", "generator-1"}, urls
        hosts = {role: urlparse(u).netloc for role, u in urls.items()}
        prom = Prometheus(
            tmp_path / "prom",
            {
                "asyncrl-learner": [hosts["learner"]],
                "asyncrl-generator": [h for r, h in hosts.items() if r != "learner"],
            },
            rule_files=[OPS / "alerts.yml"],
        )

        prom.wait_for("count(up == 1) == 3", timeout=60)
        up = {s["metric"]["instance"]: float(s["value"][1]) for s in prom.query("up")}
        assert up == {h: 1.0 for h in hosts.values()}, (up, prom.targets())

        prom.wait_for('asyncrl_policy_version{job="asyncrl-learner"} > 0', timeout=180)
        rate = prom.wait_for("sum(rate(asyncrl_generator_tokens_total[30s])) > 0")
        assert float(rate[0]["value"][1]) > 0
        q = prom.wait_for(
            "histogram_quantile(0.9, sum by (le) (rate(asyncrl_staleness_bucket[1m])))"
            " >= -Inf",  # drops NaN (no consumed groups in the window yet)
        )
        p90 = float(q[0]["value"][1])
        assert math.isfinite(p90) and p90 >= 0, p90
        versions = prom.wait_for("asyncrl_generator_policy_version")
        assert len(versions) == 2

        # Every expression the ops assets ship is valid PromQL over the live series.
        for expr in dashboard_exprs() + [r["expr"] for r in alert_rules()]:
            prom.query(expr)
        # The alert rules load and evaluate cleanly on a real server.
        deadline = time.monotonic() + 30
        while True:
            rules = prom.rules()
            bad = [
                (r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok"
            ]
            if len(rules) == len(alert_rules()) and not bad:
                break
            assert time.monotonic() < deadline, (len(rules), bad, prom.log_tail())
            time.sleep(1.0)

        promtool = shutil.which("promtool")
        if promtool:
            for role, url in urls.items():
                with urllib.request.urlopen(url, timeout=5) as r:
                    text = r.read()
                out = subprocess.run(
                    [promtool, "check", "metrics"], input=text, capture_output=True
                )
                assert out.returncode == 0 and not out.stdout.strip(), (role, out.stdout)
        for role, url in urls.items():
            with urllib.request.urlopen(url.replace("/metrics", "/healthz"), timeout=5) as r:
                assert r.status == 200, role
        assert proc.poll() is None, "asyncrl local exited during the test"
    finally:
        if prom is not None:
            prom.stop()
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

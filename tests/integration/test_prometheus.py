"""A real Prometheus server scrapes a running learner and two generators; its HTTP API shows
the policy advancing, generators producing tokens and a staleness distribution, and promtool
accepts every role's live exposition."""

from __future__ import annotations

import math
import shutil
import subprocess
import urllib.request
from urllib.parse import urlparse

import pytest

from tests.integration.conftest import next_event, start_cli
from tests.integration.prom import PROMETHEUS, Prometheus

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed")


def test_prometheus_scrapes_every_role(small_overrides, tmp_path):
    proc = start_cli(
        [
            "local",
            *small_overrides,
            "train.steps=400",
            "local.generators=2",
        ],
        tmp_path / "local.log",
    )
    prom = None
    try:
        started = next_event(proc, "started")
        urls = started["metrics"]
        hosts = {role: urlparse(u).netloc for role, u in urls.items()}
        prom = Prometheus(
            tmp_path / "prom",
            {
                "asyncrl-learner": [hosts["learner"]],
                "asyncrl-generator": [h for r, h in hosts.items() if r != "learner"],
            },
        )
        up = prom.wait_for("count(up == 1) == 3")
        assert float(up[0]["value"][1]) == 3
        prom.wait_for('asyncrl_policy_version{job="asyncrl-learner"} > 0')
        rate = prom.wait_for("sum(rate(asyncrl_generator_tokens_total[10s])) > 0")
        assert float(rate[0]["value"][1]) > 0
        q = prom.wait_for(
            "histogram_quantile(0.9, sum by (le) (rate(asyncrl_staleness_bucket[30s])))"
        )
        p90 = float(q[0]["value"][1])
        assert math.isfinite(p90) and 0 <= p90 <= 2
        promtool = shutil.which("promtool")
        if promtool:
            for role, url in urls.items():
                text = urllib.request.urlopen(url, timeout=5).read()
                out = subprocess.run(
                    [promtool, "check", "metrics"], input=text, capture_output=True
                )
                assert out.returncode == 0 and not out.stdout.strip(), (role, out.stdout)
    finally:
        if prom is not None:
            prom.stop()
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()

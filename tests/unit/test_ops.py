"""The shipped operations assets agree with the code: every metric a dashboard panel or alert
uses exists, promtool accepts the rules and their unit tests, and promtool accepts each
role's exposition."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from generators.metrics import GeneratorMetrics
from learner.metrics import LearnerMetrics

OPS = Path(__file__).resolve().parents[2] / "launch" / "ops"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed")
# Series that Prometheus itself provides.
BUILTIN = {"up"}


def exposed_names() -> set[str]:
    """Every series name the two registries can expose."""
    names = set()
    for registry in (LearnerMetrics().registry, GeneratorMetrics().registry):
        for family in registry.collect():
            if family.type == "counter":
                names.add(family.name + "_total")
            elif family.type == "histogram":
                names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
            else:
                names.add(family.name)
    return names


def dashboard_exprs() -> list[str]:
    dash = json.loads((OPS / "grafana-dashboard.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((OPS / "alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def metric_names(expr: str) -> set[str]:
    # Identifiers followed by a selector, a range or an operator (not label names or functions).
    tokens = set(re.findall(r"\b(asyncrl_[a-z_]+|up)\b", expr))
    return tokens


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_used_metric_exists(source):
    exprs = dashboard_exprs() if source == "dashboard" else alert_exprs()
    assert exprs
    known = exposed_names() | BUILTIN
    used = set().union(*(metric_names(e) for e in exprs))
    assert used - known == set()


def test_dashboard_covers_the_operator_questions():
    titles = " ".join(
        p["title"].lower()
        for p in json.loads((OPS / "grafana-dashboard.json").read_text())["panels"]
    )
    for topic in ("throughput", "staleness", "accuracy", "clip", "kl", "publish", "dropped"):
        assert topic in titles, topic


@needs_promtool
def test_promtool_checks_and_tests_the_rules():
    subprocess.run([PROMTOOL, "check", "rules", "alerts.yml"], cwd=OPS, check=True)
    out = subprocess.run(
        [PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=OPS, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def populated_learner() -> LearnerMetrics:
    m = LearnerMetrics()
    m.policy_version.set(3)
    m.steps.inc(3)
    m.staleness.observe(1)
    m.dropped.labels(reason="stale").inc()
    m.malformed.labels(reason="header").inc()
    m.step_seconds.labels(phase="update").observe(0.1)
    m.publish_seconds.observe(0.2)
    return m


@needs_promtool
@pytest.mark.parametrize("role", ["learner", "generator"])
def test_promtool_accepts_the_exposition(role):
    if role == "learner":
        registry = populated_learner().registry
    else:
        g = GeneratorMetrics()
        g.tokens.inc(10)
        g.weight_load_seconds.observe(0.1)
        registry = g.registry
    out = subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=generate_latest(registry),
        capture_output=True,
    )
    # promtool prints lint problems (units, _total, help text) and exits non-zero on them.
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), (
        out.stdout.decode() + out.stderr.decode()
    )

"""The shipped operations assets (launch/ops) agree with the code and with Prometheus.

Every metric and label a dashboard panel or alert uses exists in the learner and generator
registries; the dashboard is importable (one datasource input, unique ids, no overlapping
panels); each alert carries severity, summary, description and runbook and has unit tests that
see it fire and stay silent; promtool accepts the rules, their tests, the example config and
each role's exposition. promtool checks are skipped where it is not installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from asyncrl.generators.metrics import GeneratorMetrics
from asyncrl.launch.serve import ProcessMetrics
from asyncrl.learner.metrics import LearnerMetrics

OPS = Path(__file__).resolve().parents[2] / "launch" / "ops"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not on PATH (Debian/Ubuntu: apt-get install prometheus)"
)
# Series Prometheus adds for every target, and the labels it attaches to every scraped series.
BUILTIN_SERIES = {"up": set()}
TARGET_LABELS = {"job", "instance"}
PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}
JOBS = {"asyncrl-learner", "asyncrl-generator"}


def metric_objects(holder) -> list:
    return [v for v in vars(holder).values() if isinstance(v, (Counter, Gauge, Histogram))]


def populated_registries() -> dict[str, CollectorRegistry]:
    """A learner and a generator registry in which every series has a sample, with the
    series every role's metrics server adds (`ProcessMetrics`)."""
    out = {}
    for role, holder in (("learner", LearnerMetrics()), ("generator", GeneratorMetrics())):
        process = ProcessMetrics(holder.registry)
        for metric in metric_objects(holder) + metric_objects(process):
            # prometheus_client keeps the label names of a family in `_labelnames`.
            names = getattr(metric, "_labelnames", ())
            child = metric.labels(*["x"] * len(names)) if names else metric
            if isinstance(metric, Counter):
                child.inc(3)
            elif isinstance(metric, Gauge):
                child.set(2)
            else:
                child.observe(0.3)
        out[role] = holder.registry
    return out


def exposed_series() -> dict[str, set[str]]:
    """Every series name the two registries expose, with the label names each carries."""
    series: dict[str, set[str]] = {}
    for registry in populated_registries().values():
        for family in registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                series.setdefault(sample.name, set()).update(sample.labels)
    return series


def dashboard() -> dict:
    return json.loads((OPS / "grafana-dashboard.json").read_text())


def dashboard_exprs() -> list[str]:
    """Every panel query, and the annotation queries (live config changes)."""
    dash = dashboard()
    panels = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    return panels + [a["expr"] for a in dash["annotations"]["list"] if "expr" in a]


def alert_rules() -> list[dict]:
    rules = yaml.safe_load((OPS / "alerts.yml").read_text())
    return [r for g in rules["groups"] for r in g["rules"]]


def strip_promql(expr: str) -> str:
    """`expr` without comments, string literals and range/offset durations."""
    expr = re.sub(r"#[^\n]*", " ", expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return re.sub(r"\[[^\]]*\]", " ", expr)


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched) of each `name{...}` selector."""
    found = []
    for name, body in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", strip_promql(expr)):
        found.append((name, set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=|!=|=~|!~)", body))))
    return found


def grouping_labels(expr: str) -> set[str]:
    """Label names in by/without/on/ignoring/group_left/group_right clauses."""
    labels = set()
    clause = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"
    for body in re.findall(clause, strip_promql(expr)):
        labels |= {s.strip() for s in body.split(",") if s.strip()}
    return labels


def metric_names(expr: str) -> set[str]:
    """Identifiers that PromQL reads as metric names (not functions, keywords or labels)."""
    text = strip_promql(expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    clause = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
    text = re.sub(clause, " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", text):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


def known_series() -> dict[str, set[str]]:
    known = {name: labels | TARGET_LABELS for name, labels in exposed_series().items()}
    known.update({name: labels | TARGET_LABELS for name, labels in BUILTIN_SERIES.items()})
    return known


def test_expression_parsing_helpers():
    expr = (
        "# a comment naming asyncrl_nothing\nhistogram_quantile(0.9, sum by (le, phase) "
        '(rate(asyncrl_learner_step_seconds_bucket{job="asyncrl-learner"}[5m]))) '
        "> on (instance) group_left up and bool scalar(max(asyncrl_max_staleness)) offset 5m"
    )
    assert metric_names(expr) == {
        "asyncrl_learner_step_seconds_bucket",
        "up",
        "asyncrl_max_staleness",
    }
    assert grouping_labels(expr) == {"le", "phase", "instance"}
    assert selectors(expr) == [("asyncrl_learner_step_seconds_bucket", {"job"})]


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_used_metric_and_label_exists(source):
    exprs = dashboard_exprs() if source == "dashboard" else [r["expr"] for r in alert_rules()]
    assert exprs
    known = known_series()
    all_labels = set().union(*known.values())
    for expr in exprs:
        used = metric_names(expr)
        assert used, expr
        assert used <= known.keys(), (sorted(used - known.keys()), expr)
        for name, labels in selectors(expr):
            assert labels <= known[name], (name, sorted(labels - known[name]), expr)
        assert grouping_labels(expr) <= all_labels, (sorted(grouping_labels(expr)), expr)
        for job in re.findall(r'job\s*=\s*"([^"]*)"', expr):
            assert job in JOBS, expr


def test_every_legend_label_exists():
    all_labels = set().union(*known_series().values())
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            assert used <= all_labels, (panel["title"], used)


def test_dashboard_is_importable():
    dash = dashboard()
    assert 36 <= dash["schemaVersion"] <= 41
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    ds = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for panel in dash["panels"]:
        assert panel["datasource"] == ds, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        assert all(t.get("datasource", ds) == ds for t in panel["targets"]), panel["title"]
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_dashboard_covers_the_operator_questions():
    dash = dashboard()
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in (
        "throughput",
        "staleness",
        "reward",
        "accuracy",
        "loss",
        "clip",
        "is weight",
        "kl",
        "entropy",
        "publish",
        "dropped",
        "generators",
        "memory",
    ):
        assert topic in titles, topic
    assert "heatmap" in {p["type"] for p in dash["panels"]}
    exprs = " ".join(dashboard_exprs())
    for name in (
        "asyncrl_generators_connected",
        "asyncrl_generators_up_to_date",
        "process_resident_memory_bytes",
        "asyncrl_process_heap_bytes",
    ):
        assert name in exprs
    # Live changes (asyncrl ctl set) are marked on every panel.
    notes = [a for a in dash["annotations"]["list"] if a.get("enable")]
    assert any("asyncrl_config_changes_total" in a["expr"] for a in notes)


def test_every_alert_is_documented():
    rules = alert_rules()
    groups = yaml.safe_load((OPS / "alerts.yml").read_text())["groups"]
    assert [g["name"] for g in groups] == ["asyncrl"]
    names = {r["alert"] for r in rules}
    assert {
        "AsyncRLLearnerStalled",
        "AsyncRLStalenessAtLimit",
        "AsyncRLDropRateHigh",
        "AsyncRLGeneratorDown",
        "AsyncRLWeightsNotPropagating",
    } <= names
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert {"summary", "description", "runbook"} <= rule["annotations"].keys(), rule["alert"]


def alert_test_files() -> list[str]:
    return sorted(p.name for p in OPS.glob("alerts*_test.yml"))


def test_every_alert_has_firing_and_silent_tests():
    assert "alerts_test.yml" in alert_test_files()
    tests = [t for f in alert_test_files() for t in yaml.safe_load((OPS / f).read_text())["tests"]]
    cases = [case for t in tests for case in t["alert_rule_test"]]
    for rule in alert_rules():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c.get("exp_alerts") for c in mine), f"{rule['alert']}: no firing case"
        assert any(not c.get("exp_alerts") for c in mine), f"{rule['alert']}: no silent case"


def test_example_config_scrapes_the_expected_jobs():
    config = yaml.safe_load((OPS / "prometheus.example.yml").read_text())
    assert {s["job_name"] for s in config["scrape_configs"]} == JOBS
    assert config["rule_files"] == ["alerts.yml"]


@needs_promtool
def test_promtool_checks_and_tests_the_rules():
    for args in (
        ["check", "rules", "alerts.yml"],
        ["test", "rules", *alert_test_files()],
        ["check", "config", "prometheus.example.yml"],
    ):
        out = subprocess.run([PROMTOOL, *args], cwd=OPS, capture_output=True, text=True)
        assert out.returncode == 0, " ".join(args) + "\n" + out.stdout + out.stderr


@needs_promtool
@pytest.mark.parametrize("role", ["learner", "generator"])
def test_promtool_accepts_the_exposition(role):
    registry = populated_registries()[role]
    out = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=generate_latest(registry), capture_output=True
    )
    # promtool prints lint problems (units, _total, help text) and exits non-zero on them.
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), (
        out.stdout.decode() + out.stderr.decode()
    )

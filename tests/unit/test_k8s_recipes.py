"""The Kubernetes manifests (`launch/recipes/kubernetes/`), checked offline.

Every object against the Kubernetes API's own schemas (strict: unknown fields are errors) with
`kubernetes-validate`, which ships them in its wheel; the Prometheus Operator's ServiceMonitor
is a custom resource it has no schema for, so the fields we use are checked against the
subset of the operator's CRD schema written out below. Then what a schema cannot know: the
pieces refer to each other correctly (selectors, named ports, the learner's ports, the key
layout `asyncrl keys` writes) and the run's config with each role's overrides is one that
`asyncrl` accepts.
"""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from asyncrl.launch.config import load_config

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate (the dev extra) is not installed"
)

K8S = Path(__file__).resolve().parents[2] / "launch" / "recipes" / "kubernetes"
# The oldest Kubernetes release still maintained upstream when the recipes were written.
K8S_VERSION = "1.30.0"

# From the Prometheus Operator's ServiceMonitor CRD (monitoring.coreos.com/v1), the fields the
# recipe uses; additionalProperties false so a misspelt one fails as it would on apply.
SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        }
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": "^(0|([0-9]+(ms|s|m|h))+)$"},
                        },
                    },
                },
            },
        },
    },
}


def _docs() -> dict[tuple[str, str], dict]:
    """Every object of every manifest, by (kind, name)."""
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


DOCS = _docs()


def _validate(doc: dict) -> None:
    if doc["kind"] == "ServiceMonitor":
        jsonschema.validate(doc, SERVICE_MONITOR)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("key", sorted(DOCS), ids=lambda k: f"{k[0]}/{k[1]}")
def test_every_object_matches_its_schema(key):
    _validate(DOCS[key])


@pytest.mark.parametrize(
    "key, path, bad",
    [
        # A misspelt field, a wrong type and a misspelt ServiceMonitor field are all caught.
        (("Deployment", "asyncrl-generator"), ("spec",), {"replica": 2}),
        (("StatefulSet", "asyncrl-learner"), ("spec",), {"replicas": "one"}),
        (("ServiceMonitor", "asyncrl-learner"), ("spec", "endpoints", 0), {"intervall": "5s"}),
    ],
)
def test_the_validation_catches_mistakes(key, path, bad):
    doc = copy.deepcopy(DOCS[key])
    target = doc
    for step in path:
        target = target[step]
    target.update(bad)
    with pytest.raises((kubernetes_validate.ValidationError, jsonschema.ValidationError)):
        _validate(doc)


def _pod(kind: str, name: str) -> dict:
    return DOCS[(kind, name)]["spec"]["template"]


def _ports(pod: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c["ports"]}


def test_services_select_their_pods_by_named_ports():
    for workload, name in (("StatefulSet", "asyncrl-learner"), ("Deployment", "asyncrl-generator")):
        pod, svc = _pod(workload, name), DOCS[("Service", name)]
        labels = pod["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= labels.items()
        assert DOCS[(workload, name)]["spec"]["selector"]["matchLabels"].items() <= labels.items()
        for port in svc["spec"]["ports"]:
            assert _ports(pod)[port["targetPort"]] == port["port"], port
        monitor = DOCS[("ServiceMonitor", name)]["spec"]
        assert monitor["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        assert monitor["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
        annotations = pod["metadata"]["annotations"]
        assert int(annotations["prometheus.io/port"]) == _ports(pod)["metrics"]


def _learner_argv() -> list[str]:
    """The learner's command line as the shell in its container runs it (no checkpoint yet)."""
    script = _pod("StatefulSet", "asyncrl-learner")["spec"]["containers"][0]["args"][0]
    command = script.split("exec ", 1)[1]
    return [a for a in shlex.split(command) if a != '"$@"' and a != "$@"]


def _generator_argv() -> list[str]:
    return _pod("Deployment", "asyncrl-generator")["spec"]["containers"][0]["command"]


def _overrides(argv: list[str]) -> list[str]:
    return [a for a in argv if "=" in a and not a.startswith("--")]


def test_the_run_config_and_each_roles_overrides_load(tmp_path):
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(DOCS[("ConfigMap", "asyncrl-config")]["data"]["run.yaml"])
    learner = load_config(str(run_yaml), _overrides(_learner_argv()))
    generator = load_config(str(run_yaml), _overrides(_generator_argv()))
    # The learner's ports are the ones its Service and pod publish.
    ports = _ports(_pod("StatefulSet", "asyncrl-learner"))
    lc = learner.learner
    assert (lc.control_port, lc.rollouts_port, lc.weights_port, lc.metrics_port) == (
        ports["control"],
        ports["rollouts"],
        ports["weights"],
        ports["metrics"],
    )
    assert lc.bind_host == "0.0.0.0" and lc.metrics_host == "0.0.0.0"
    argv = _generator_argv()
    svc = DOCS[("Service", "asyncrl-learner")]["metadata"]["name"]
    assert argv[argv.index("--learner") + 1] == f"tcp://{svc}:{ports['control']}"
    gc = generator.generator
    assert gc.metrics_port == _ports(_pod("Deployment", "asyncrl-generator"))["metrics"]
    assert gc.metrics_host == "0.0.0.0"


def _mounted_keys(kind: str, name: str) -> tuple[str, set[str]]:
    """(security.curve_dir, the files the keys Secret puts there)."""
    pod = _pod(kind, name)["spec"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "keys")
    secret = next(v for v in pod["volumes"] if v["name"] == "keys")["secret"]
    data = DOCS[("Secret", secret["secretName"])]["stringData"]
    files = {i["path"] for i in secret["items"]} if "items" in secret else set(data)
    assert {i["key"] for i in secret.get("items", [])} <= set(data)
    return mount["mountPath"], files


def test_keys_are_laid_out_as_asyncrl_keys_writes_them():
    learner_dir, learner_files = _mounted_keys("StatefulSet", "asyncrl-learner")
    gen_dir, gen_files = _mounted_keys("Deployment", "asyncrl-generator")
    # protocol.sockets.load_curve_keys: the server reads server.key_secret and trusts every
    # clients/*.key; a client reads <client_name>.key_secret and server.key.
    assert {"server.key_secret", "clients/gen.key"} <= learner_files
    assert gen_files == {"server.key", "gen.key_secret"}  # never the server's secret
    assert f"security.curve_dir={learner_dir}" in _learner_argv()
    assert f"security.curve_dir={gen_dir}" in _generator_argv()
    assert "security.client_name=gen" in _generator_argv()

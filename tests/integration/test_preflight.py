"""Each bad input of a user's run stops `asyncrl learner|generator|local` with exit code 2 and
exactly one line on stderr saying where, before DeepSpeed, the model or an engine is imported
(issue 15: a missing model directory used to cost 45 s and a 73-line traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Runs the CLI, then reports which heavy modules the failed run had imported.
PROBE = (
    "import sys; from asyncrl.launch.cli import main; rc = main(sys.argv[1:]); "
    "heavy = ('deepspeed', 'asyncrl.learner.engine', 'asyncrl.learner.run', "
    "'asyncrl.generators.run', 'asyncrl.launch.local'); "
    "print(sorted(m for m in heavy if m in sys.modules)); sys.exit(rc)"
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A model directory as preflight sees it: config.json, a weights file, a tokenizer
    (the weights are never read before the checks pass)."""
    from asyncrl.launch.tiny import TinyTaskConfig, build_tokenizer, tiny_model_config

    d = tmp_path_factory.mktemp("model")
    tiny_model_config(TinyTaskConfig()).save_pretrained(d)
    build_tokenizer().save_pretrained(d)
    (d / "model.safetensors").write_bytes(b"")
    return d


def _jsonl(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def run_probe(args: list[str], cwd: Path) -> tuple[int, list[str], str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, proc.stderr.splitlines(), proc.stdout


def _case(tmp: Path, model: Path, name: str) -> tuple[list[str], str]:
    """(CLI arguments, the one line expected on stderr, as a substring) for each bad input."""
    good = _jsonl(tmp / "good.jsonl", ['{"prompt": "1+1=", "answer": "2"}'])
    m = f"model.path={model}"
    # Line 3 is blank and skipped: the bad row is on line 4 of the file.
    bad_json = _jsonl(
        tmp / "bad.jsonl",
        ['{"prompt": "a", "answer": "1"}', '{"prompt": "b", "answer": "2"}', "", '{"prompt": "c",'],
    )
    solution = _jsonl(tmp / "sol.jsonl", ['{"prompt": "1+1=", "solution": "2"}'])
    chat = _jsonl(
        tmp / "chat.jsonl", ['{"prompt": [{"role": "user", "content": "1+1="}], "answer": "2"}']
    )
    (tmp / "run.yaml").write_text("train:\n  lr: 1.0e-6\n  steps: [3\n")
    (tmp / "keys.yaml").write_text("train:\n  lr: 1.0e-6\n  learning_rate: 3\n")
    (tmp / "not-a-model").mkdir(exist_ok=True)
    (tmp / "broken").mkdir(exist_ok=True)
    for f in ("config.json", "model.safetensors"):
        (tmp / "broken" / f).write_bytes((model / f).read_bytes())
    (tmp / "broken" / "tokenizer.json").write_text("{not json")
    (tmp / "broken" / "tokenizer_config.json").write_text("{}")
    (tmp / "no-tokenizer").mkdir(exist_ok=True)
    for f in ("config.json", "model.safetensors"):
        (tmp / "no-tokenizer" / f).write_bytes((model / f).read_bytes())
    plugin = "reward.name=plugin"
    cases = {
        "missing model dir": (
            ["learner", "model.path=/nonexistent/model", f"data.train_path={good}"],
            "asyncrl learner: model.path: /nonexistent/model: no such directory",
        ),
        "not a model dir": (
            ["learner", f"model.path={tmp / 'not-a-model'}", f"data.train_path={good}"],
            "not-a-model: no config.json; not a Hugging Face model directory",
        ),
        "hub id not allowed": (
            ["learner", "model.path=Qwen/Qwen2.5-0.5B", f"data.train_path={good}"],
            "Qwen/Qwen2.5-0.5B: no such directory; to download it from the Hugging Face Hub "
            "set model.allow_hub_download=true",
        ),
        "tokenizer does not load": (
            ["learner", f"model.path={tmp / 'broken'}", f"data.train_path={good}"],
            "broken: the tokenizer does not load",
        ),
        "no tokenizer files": (
            ["learner", f"model.path={tmp / 'no-tokenizer'}", f"data.train_path={good}"],
            "no-tokenizer: the tokenizer has no vocabulary",
        ),
        "metrics auth file missing": (
            ["learner", m, f"data.train_path={good}", f"learner.metrics_auth_file={tmp / 'pw'}"],
            f"asyncrl learner: learner.metrics_tls_* / metrics_auth_file: [Errno 2] No such "
            f"file or directory: '{tmp / 'pw'}'",
        ),
        "metrics TLS key without certificate": (
            ["generator", m, f"data.train_path={good}", f"generator.metrics_tls_keyfile={good}"],
            "asyncrl generator: generator.metrics_tls_* / metrics_auth_file: metrics TLS needs "
            "both a certificate file and a key file",
        ),
        "missing data file": (
            ["learner", m, f"data.train_path={tmp / 'nope.jsonl'}"],
            f"asyncrl learner: data.train_path: {tmp / 'nope.jsonl'}: no such file or directory",
        ),
        "malformed JSONL line": (
            ["learner", m, f"data.train_path={bad_json}"],
            f"asyncrl learner: {bad_json}:4: invalid JSON: Expecting property name enclosed in "
            "double quotes at the end of the line",
        ),
        "answer field missing for the reward": (
            ["learner", m, f"data.train_path={solution}"],
            f"{solution}:1: no field 'answer' (reward.answer_field); the row has 'prompt', "
            "'solution'",
        ),
        "answer field missing for the evaluation": (
            ["learner", m, f"data.train_path={good}", f"data.eval_path={solution}"],
            f"{solution}:1: no field 'answer' (reward.answer_field)",
        ),
        "chat prompts without a chat template": (
            ["learner", m, f"data.train_path={chat}"],
            f"{chat}:1: the prompt is a message list but the tokenizer of model.path has no "
            "chat template",
        ),
        "reward plug-in does not import": (
            ["learner", m, f"data.train_path={good}", plugin, "reward.plugin=no_such_mod:f"],
            "asyncrl learner: reward plug-in 'no_such_mod:f': cannot import module 'no_such_mod'",
        ),
        "reward plug-in fails on a row": (
            ["learner", m, f"data.train_path={good}", plugin, "reward.plugin=json:loads"],
            f"asyncrl learner: reward plug-in json:loads: fails on {good}:1 (TypeError:",
        ),
        "YAML syntax error": (
            ["learner", "--config", str(tmp / "run.yaml")],
            f"asyncrl: {tmp / 'run.yaml'}:4:1: YAML syntax error: expected ',' or ']', but got "
            "'<stream end>' (while parsing a flow sequence started at line 3, column 10)",
        ),
        "bad override value": (
            ["learner", "train.lr=abc"],
            "asyncrl: override train.lr=abc: train.lr: Input should be a valid number",
        ),
        "TRL name in the file": (
            ["learner", "--config", str(tmp / "keys.yaml")],
            f"asyncrl: {tmp / 'keys.yaml'}:3:3: train.learning_rate: unknown key; did you mean "
            "train.lr? (TRL's learning_rate)",
        ),
        "grpo as an objective": (
            ["local", "objective.name=grpo"],
            "GRPO is objective.name: ppo with advantage.name: grpo",
        ),
        "generator: missing model dir": (
            ["generator", "model.path=/nonexistent/model", f"data.train_path={good}"],
            "asyncrl generator: model.path: /nonexistent/model: no such directory",
        ),
        "local: missing data file": (
            ["local", f"data.train_path={tmp / 'nope.jsonl'}"],
            "asyncrl local: data.train_path:",
        ),
    }
    return cases[name]


CASES = [
    "missing model dir",
    "not a model dir",
    "hub id not allowed",
    "tokenizer does not load",
    "no tokenizer files",
    "metrics auth file missing",
    "metrics TLS key without certificate",
    "missing data file",
    "malformed JSONL line",
    "answer field missing for the reward",
    "answer field missing for the evaluation",
    "chat prompts without a chat template",
    "reward plug-in does not import",
    "reward plug-in fails on a row",
    "YAML syntax error",
    "bad override value",
    "TRL name in the file",
    "grpo as an objective",
    "generator: missing model dir",
    "local: missing data file",
]


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_and_exit_2_before_anything_loads(name, tmp_path, model_dir):
    args, expected = _case(tmp_path, model_dir, name)
    rc, err, out = run_probe(args, tmp_path)
    assert rc == 2, (rc, err)
    assert len(err) == 1, err  # one line: no traceback, no library warnings
    assert expected in err[0], err[0]
    assert out.strip() == "[]", out  # neither DeepSpeed nor a role's run module was imported


def test_the_issue_case_through_the_module_entry(tmp_path):
    # What the user ran (issue 15): a YAML naming a model directory that does not exist.
    data = _jsonl(tmp_path / "train.jsonl", [json.dumps({"prompt": "1+1=", "answer": "2"})])
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model:\n  path: {tmp_path / 'model'}\ndata:\n  train_path: {data}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "asyncrl.launch.cli", "learner", "--config", str(cfg)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr == f"asyncrl learner: model.path: {tmp_path / 'model'}: no such directory\n"
    assert proc.stdout == ""

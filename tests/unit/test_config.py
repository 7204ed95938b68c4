"""The config schema: every shipped preset parses, every field is documented, overrides and
bad values behave, and the CLI fails at start with a message that says what to change."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from asyncrl.launch.cli import main
from asyncrl.launch.config import (
    PRESETS_DIR,
    AsyncRLConfig,
    ConfigError,
    describe_fields,
    dump_config,
    field_rows,
    load_config,
    reference_markdown,
)

PRESETS = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def test_the_three_presets_ship():
    assert {"tiny-cpu", "single-gpu-hf", "multi-gpu-sglang"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_parses_and_round_trips(name, tmp_path):
    cfg = load_config(name)
    again = tmp_path / "again.yaml"
    again.write_text(dump_config(cfg))
    assert load_config(str(again)) == cfg


def test_default_is_the_tiny_cpu_preset(capsys):
    # `asyncrl local` with no --config runs the embedded default: the tiny-cpu preset.
    assert main(["local", "--print-config"]) == 0
    assert capsys.readouterr().out == dump_config(load_config("tiny-cpu"))


def _undocumented(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _undocumented(ann, f"{prefix}{name}.")
        elif not (field.description or "").strip():
            out.append(prefix + name)
    return out


def test_every_field_has_a_description():
    assert _undocumented(AsyncRLConfig) == []
    assert len(describe_fields()) > 80


def test_the_reference_page_matches_the_schema():
    # docs/config.md is generated; a field added, renamed or re-described without
    # regenerating it fails here (`asyncrl config-fields --markdown > docs/config.md`).
    page = Path(__file__).resolve().parents[2] / "docs" / "config.md"
    assert page.read_text() == reference_markdown()
    # One table row per field line of `asyncrl config-fields`.
    rows = [line for line in page.read_text().splitlines() if line.startswith("| `")]
    assert len(rows) == len(describe_fields())


def test_dotted_overrides_are_typed():
    cfg = load_config(None, ["train.steps=7", "objective.name=cispo", "buffer.max_staleness=0"])
    assert (cfg.train.steps, cfg.objective.name, cfg.buffer.max_staleness) == (7, "cispo", 0)


@pytest.mark.parametrize(
    "override, hint",
    [
        ("train.stpes=3", "unknown key"),
        ("objective.name=ppo2", "objective.name"),
        ("objective.dual_clip_c=0.5", "dual_clip_c"),
        ("buffer.max_staleness=-1", "buffer.max_staleness"),
        ("train.mini_batches=10000", "lower it"),
        ("reward.name=plugin", "reward.plugin"),
        ("train=3", "train"),
    ],
)
def test_bad_values_name_the_field(override, hint):
    with pytest.raises(ConfigError, match=hint.replace(".", r"\.")):
        load_config(None, [override])


def test_cli_reports_bad_config_and_exits_2(capsys):
    assert main(["local", "train.steps=0"]) == 2
    assert capsys.readouterr().err == (
        "asyncrl: override train.steps=0: train.steps: Input should be greater than or equal "
        "to 1 (got 0)\n"
    )


def test_cli_print_config(capsys):
    assert main(["learner", "--print-config", "train.steps=9"]) == 0
    assert "steps: 9" in capsys.readouterr().out


def test_config_and_cli_import_without_torch():
    # A bad config must fail in a fraction of a second, before torch (seconds) is imported:
    # the schema lives in torch-free modules. A fresh interpreter, since this one has torch.
    code = (
        "import sys; from asyncrl.launch.config import load_config; import asyncrl.launch.cli; "
        "load_config('tiny-cpu', ['objective.name=cispo', 'advantage.name=rloo']); "
        "print(sorted(m for m in ('torch', 'transformers', 'deepspeed') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def _error_lines(path: str | None, overrides: list[str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value).splitlines()


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    bad = tmp_path / "run.yaml"
    # Line 3 is indented deeper than its sibling: PyYAML stops at its colon (column 9).
    bad.write_text("train:\n  lr: 1\n   steps: 3\n")
    assert _error_lines(str(bad), []) == [
        f"{bad}:3:9: YAML syntax error: mapping values are not allowed here"
    ]


def test_override_errors_name_the_override_not_the_preset():
    assert _error_lines("tiny-cpu", ["train.lr=abc"]) == [
        "override train.lr=abc: train.lr: Input should be a valid number, unable to parse "
        "string as a number (got 'abc')"
    ]
    # A section's own check is blamed on the override that set the section.
    assert _error_lines("tiny-cpu", ["learner.weights.type=disk"]) == [
        "override learner.weights.type=disk: learner.weights.dir: Field required"
    ]
    # A cross-section check, on the override its message names.
    (line,) = _error_lines("tiny-cpu", ["train.mini_batches=10000"])
    assert line.startswith("override train.mini_batches=10000: train.mini_batches (10000)")


def test_file_errors_name_the_key_line_and_column(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("train:\n  lr: 1.0e-6\n  steps: abc\nsampling:\n  group_sise: 4\n")
    assert _error_lines(str(f), []) == [
        # The value's position for a bad value (line 3, column 10), the key's for a bad key.
        f"{f}:3:10: train.steps: Input should be a valid integer, unable to parse string as "
        "an integer (got 'abc')",
        f"{f}:5:3: sampling.group_sise: unknown key; did you mean sampling.group_size?",
    ]


@pytest.mark.parametrize(
    "override, suggestion",
    [
        ("learning_rate=1e-6", "did you mean train.lr? (TRL's learning_rate)"),
        ("train.learning_rate=1e-6", "did you mean train.lr? (TRL's learning_rate)"),
        ("num_generations=8", "did you mean sampling.group_size? (TRL's num_generations)"),
        (
            "per_device_train_batch_size=2",
            "did you mean train.micro_batch_size? (TRL's per_device_train_batch_size)",
        ),
        (
            "max_completion_length=512",
            "did you mean sampling.max_new_tokens? (TRL's max_completion_length)",
        ),
        # TRL's beta and loss_type mean one thing in GRPOConfig and another in DPOConfig.
        ("beta=0.04", "objective.dpo_beta with objective.name=dpo (DPOConfig's beta)?"),
        ("loss_type=ipo", "objective.name=dpo (DPOConfig's sigmoid, ipo)?"),
        ("epsilon=0.2", "did you mean objective.eps_low? (TRL's epsilon)"),
        ("data.train_files=x.parquet", "did you mean data.train_path? (verl's train_files)"),
        (
            "actor_rollout_ref.rollout.n=8",
            "verl's layout? here: actor_rollout_ref.rollout.n -> sampling.group_size",
        ),
        ("train.stpes=3", "did you mean train.steps?"),  # difflib among the section's fields
        ("train.group_size=3", "did you mean sampling.group_size?"),  # same name elsewhere
    ],
)
def test_unknown_keys_suggest_the_field(override, suggestion):
    (line,) = _error_lines("tiny-cpu", [override])
    key = override.split("=")[0].split(".rollout")[0]
    assert line.startswith(f"override {override}: {key}: unknown key; "), line
    assert line.endswith(suggestion), line


def test_every_alias_points_at_a_field():
    from asyncrl.launch.config_errors import TRL_ALIASES, VERL_ALIASES

    fields = {name for name, _, _ in field_rows()}
    targets = [t for t in {**TRL_ALIASES, **VERL_ALIASES}.values() if " " not in t]
    assert [t for t in targets if t not in fields] == []


@pytest.mark.parametrize(
    "override, hint",
    [
        ("objective.name=grpo", "GRPO is objective.name: ppo with advantage.name: grpo"),
        ("objective=grpo", "GRPO is objective.name: ppo with advantage.name: grpo"),
        ("objective.name=dr_grpo", "Dr. GRPO is objective.name: ppo, objective.agg: seq-mean"),
        ("objective.name=dapo", "DAPO is objective.name: ppo"),
        ("objective.name=rloo", "rloo is an advantage"),
        ("advantage.name=cispo", "cispo is an objective: objective.name: cispo"),
    ],
)
def test_algorithm_names_get_a_hint(override, hint):
    (line,) = _error_lines("tiny-cpu", [override])
    value = override.split("=")[1]
    assert line.startswith(f"override {override}: ") and f"(got '{value}'); {hint}" in line, line


def test_defaults_suit_a_real_model_and_the_tiny_preset_keeps_its_own():
    cfg = load_config(None, ["model.path=/m", "data.train_path=/d.jsonl"])
    assert (cfg.train.lr, cfg.sampling.max_new_tokens, cfg.train.micro_batch_size) == (
        1e-6,
        1024,
        4,
    )
    tiny = load_config("tiny-cpu")
    assert (tiny.train.lr, tiny.sampling.max_new_tokens, tiny.train.micro_batch_size) == (
        2e-4,
        8,
        64,
    )


@pytest.mark.parametrize("name", ["single-gpu-hf", "multi-gpu-sglang"])
def test_gpu_presets_print_no_tiny_section(name, capsys):
    assert main(["learner", "--config", name, "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "\ntiny:" not in out and "model:" in out
    assert main(["local", "--print-config"]) == 0
    assert "\ntiny:" in capsys.readouterr().out  # the embedded default still shows it

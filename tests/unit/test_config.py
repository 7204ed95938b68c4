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
    err = capsys.readouterr().err
    assert "train.steps" in err and "greater than or equal to 1" in err


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

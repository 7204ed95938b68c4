"""Prompt datasets owned by the learner's rank 0: loading, tokenizing, a resumable cursor.

The learner, not the generators, owns the order of prompts, so a restart resumes exactly where
the checkpoint says and no two generators get the same prompt by accident.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """A dataset that cannot be read; the message starts with where (`file:line:`)."""


def load_rows(path: str) -> list[dict]:
    """Rows from JSONL (one JSON object per line), Parquet, or a saved `datasets` directory."""
    return read_rows(path)[0]


def read_rows(path: str) -> tuple[list[dict], list[str]]:
    """The rows of a dataset and where each one is (`file:line` for JSONL, `file: row N`
    otherwise), so a later check can point at the row it rejects. Raises DataError."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: no such file or directory")
    if p.is_dir():
        rows = _saved_dataset_rows(p)
    elif p.suffix == ".parquet":
        rows = _parquet_rows(p)
    else:
        return _jsonl_rows(p)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows, [f"{path}: row {i}" for i in range(1, len(rows) + 1)]


def _jsonl_rows(p: Path) -> tuple[list[dict], list[str]]:
    rows, where = [], []
    # Bytes, decoded per line: a bad byte is then reported on its own line.
    with p.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                where = f"{p}:{lineno}: not UTF-8 text"
                raise DataError(f"{where} ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                hint = ""
                if lineno == 1 and line.lstrip().startswith("["):
                    hint = " (a JSON array? JSONL has one object per line)"
                # A line cut short fails past its newline, which json counts as line 2.
                at = f"column {e.colno}" if e.lineno == 1 else "the end of the line"
                raise DataError(f"{p}:{lineno}: invalid JSON: {e.msg} at {at}{hint}") from None
            if not isinstance(row, dict):
                raise DataError(
                    f"{p}:{lineno}: each line must be a JSON object, got {type(row).__name__}"
                )
            rows.append(row)
            where.append(f"{p}:{lineno}")
    if not rows:
        raise DataError(f"{p}: no rows")
    return rows, where


def _missing_library(p: Path, what: str, module: str) -> DataError:
    return DataError(f"{p}: reading {what} needs the {module} package: pip install 'asyncrl[data]'")


def _parquet_rows(p: Path) -> list[dict]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise _missing_library(p, "Parquet", "pyarrow") from None
    try:
        return pq.read_table(p).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{p}: not a readable Parquet file ({e})") from None


def _saved_dataset_rows(p: Path) -> list[dict]:
    try:
        from datasets import Dataset, load_from_disk
    except ImportError:
        raise _missing_library(p, "a saved dataset directory", "datasets") from None
    try:
        ds = load_from_disk(str(p))
    except FileNotFoundError:
        raise DataError(
            f"{p}: a directory, but not one saved by datasets' save_to_disk (expected "
            "dataset_info.json or dataset_dict.json)"
        ) from None
    if not isinstance(ds, Dataset):
        splits = ", ".join(sorted(ds))
        raise DataError(f"{p}: a dataset with splits ({splits}); name one: {p}/<split>")
    return [dict(r) for r in ds]


@dataclass
class Prompt:
    index: int
    text: str
    token_ids: np.ndarray  # int32
    row: dict


class PromptSource:
    """Tokenized prompts served in a seeded per-epoch permutation, with a saveable cursor."""

    def __init__(
        self,
        rows: list[dict],
        tokenizer,
        prompt_field: str,
        seed: int = 0,
        tools: list[dict] | None = None,
    ):
        self.rows = rows
        self.seed = seed
        self.prompts: list[Prompt] = []
        for i, row in enumerate(rows):
            if prompt_field not in row:
                raise ValueError(f"row {i} has no field {prompt_field!r} (data.prompt_field)")
            text = prompt_text(row, prompt_field, tokenizer, tools)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            self.prompts.append(Prompt(i, text, np.asarray(ids, dtype=np.int32), row))
        self.epoch = 0
        self.position = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.prompts))

    def next(self) -> Prompt:
        if self.position >= len(self._order):
            self.epoch += 1
            self.position = 0
            self._order = self._permutation(self.epoch)
        p = self.prompts[int(self._order[self.position])]
        self.position += 1
        return p

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order = self._permutation(self.epoch)


def prompt_text(row: dict, prompt_field: str, tokenizer, tools: list[dict] | None = None) -> str:
    """Chat-style rows (a list of {role, content}) go through the tokenizer's chat template,
    with the JSON schemas of the environment's tools (`tools=`) when it has some."""
    value = row[prompt_field]
    if isinstance(value, list):
        return tokenizer.apply_chat_template(
            value, tools=tools or None, tokenize=False, add_generation_prompt=True
        )
    return str(value)

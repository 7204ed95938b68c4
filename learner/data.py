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


def load_rows(path: str) -> list[dict]:
    """Rows from JSONL (one JSON object per line), Parquet, or a saved `datasets` directory."""
    p = Path(path)
    if p.is_dir():
        from datasets import load_from_disk  # optional: only for saved HF datasets

        return [dict(r) for r in load_from_disk(str(p))]
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq  # optional: only for parquet files

        return pq.read_table(p).to_pylist()
    rows = []
    with p.open() as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{lineno}: each line must be a JSON object")
                rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


@dataclass
class Prompt:
    index: int
    text: str
    token_ids: np.ndarray  # int32
    row: dict


class PromptSource:
    """Tokenized prompts served in a seeded per-epoch permutation, with a saveable cursor."""

    def __init__(self, rows: list[dict], tokenizer, prompt_field: str, seed: int = 0):
        self.rows = rows
        self.seed = seed
        self.prompts: list[Prompt] = []
        for i, row in enumerate(rows):
            if prompt_field not in row:
                raise ValueError(f"row {i} has no field {prompt_field!r} (data.prompt_field)")
            text = prompt_text(row, prompt_field, tokenizer)
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


def prompt_text(row: dict, prompt_field: str, tokenizer) -> str:
    """Chat-style rows (a list of {role, content}) go through the tokenizer's chat template."""
    value = row[prompt_field]
    if isinstance(value, list):
        return tokenizer.apply_chat_template(value, tokenize=False, add_generation_prompt=True)
    return str(value)

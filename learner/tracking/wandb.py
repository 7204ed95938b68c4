"""Weights & Biases, offline by default: the run is written under the output directory and
can be synced later with `wandb sync` (needs the `wandb` package)."""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

from asyncrl.learner.tracking.base import TrackerUnavailable


def check_available() -> None:
    if importlib.util.find_spec("wandb") is None:
        raise TrackerUnavailable(
            "learner.report_to lists wandb but the wandb package is not installed "
            "(pip install 'asyncrl[wandb]')"
        )


class WandbTracker:
    def __init__(self, directory: Path, project: str, config: dict):
        check_available()
        wandb = importlib.import_module("wandb")
        directory.mkdir(parents=True, exist_ok=True)
        # Offline unless the operator chose a mode: a learner never needs the network to train.
        mode = os.environ.get("WANDB_MODE", "offline")
        self._run = wandb.init(project=project, dir=str(directory), mode=mode, config=config)

    def log(self, step: int, stats: dict[str, float]) -> None:
        self._run.log(dict(stats), step=step)

    def close(self) -> None:
        self._run.finish()

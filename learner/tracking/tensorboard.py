"""TensorBoard event files through torch's writer (needs the `tensorboard` package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from asyncrl.learner.tracking.base import TrackerUnavailable


def check_available() -> None:
    if importlib.util.find_spec("tensorboard") is None:
        raise TrackerUnavailable(
            "learner.report_to lists tensorboard but the tensorboard package is not installed "
            "(pip install 'asyncrl[tensorboard]')"
        )


class TensorBoardTracker:
    """One scalar per statistic, tagged by name, at the policy version. A run resumed at
    version v has TensorBoard hide what the killed run wrote for later steps (`purge_step`):
    they are trained again."""

    def __init__(self, log_dir: Path, resumed_from: int | None = None):
        check_available()
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        purge = resumed_from + 1 if resumed_from is not None else None
        self._writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge)

    def log(self, step: int, stats: dict[str, float]) -> None:
        for name, value in stats.items():
            self._writer.add_scalar(name, value, global_step=step)
        # A live TensorBoard sees each step as it happens, not at the writer's own pace.
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

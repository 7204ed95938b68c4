"""The always-available tracker: one JSON object per step, appended to a file."""

from __future__ import annotations

import json
import time
from pathlib import Path

from asyncrl.learner.tracking.base import json_number


class JsonlTracker:
    """`{"step": k, "time": unix seconds, "<stat>": value, ...}` per line; a resumed run
    appends to the same file, so the file holds the whole version sequence."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = path.open("a", encoding="utf-8")

    def log(self, step: int, stats: dict[str, float]) -> None:
        line = {"step": step, "time": round(time.time(), 3)}
        line.update({k: json_number(v) for k, v in stats.items()})
        # One flushed line per step: a crash loses at most the step being written.
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

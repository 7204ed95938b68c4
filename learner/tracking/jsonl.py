"""The always-available tracker: one JSON object per step, appended to a file."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from asyncrl.learner.tracking.base import json_number

logger = logging.getLogger(__name__)


class JsonlTracker:
    """`{"step": k, "time": unix seconds, "<stat>": value, ...}` per line; a resumed run
    appends to the same file, so the file holds the whole version sequence.

    `resumed_from`: the version a resumed run restarts at. The steps after it that the
    killed run had logged were undone by the resume (they are trained again), so their lines
    leave the file for `<name>.rolled_back.jsonl`, with a torn last line a crash may have
    left: a reader of metrics.jsonl then sees each step once, as the run's history holds it.
    """

    def __init__(self, path: Path, resumed_from: int | None = None):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        if resumed_from is not None and path.exists():
            roll_back(path, resumed_from)
        self._file = path.open("a", encoding="utf-8")

    def log(self, step: int, stats: dict[str, float]) -> None:
        line = {"step": step, "time": round(time.time(), 3)}
        line.update({k: json_number(v) for k, v in stats.items()})
        # One flushed line per step: a crash loses at most the step being written.
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _step_of(line: str) -> int | None:
    try:
        step = json.loads(line).get("step")
    except (ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None


def roll_back(path: Path, version: int) -> int:
    """Move the lines of `path` past `version` (and any that does not parse) to the rolled-back
    file beside it; returns how many moved. The kept lines replace the file atomically."""
    keep, moved = [], []
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            step = _step_of(line)
            (keep if step is not None and step <= version else moved).append(line)
    if not moved:
        return 0
    side = path.with_name(f"{path.stem}.rolled_back.jsonl")
    with side.open("a", encoding="utf-8") as f:
        f.writelines(line if line.endswith("\n") else line + "\n" for line in moved)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.writelines(keep)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    logger.info(
        "%s: %d lines of steps after version %d (undone by the resume) moved to %s",
        path.name,
        len(moved),
        version,
        side.name,
    )
    return len(moved)

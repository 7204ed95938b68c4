"""Where a generator's wall time goes, by phase, for `asyncrl bench`'s loss breakdown and the
`asyncrl_generator_phase_seconds_total` series.

The generate loop is one thread; each phase is timed where the loop enters it, so the phases
add up to the loop's wall time except for what `other` collects (building and counting a group,
the summary line, reconnect backoff).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

# generate: the backend producing tokens; weights: fetching, verifying and loading a version
# (between groups or in flight); lease: waiting for a lease reply that was not prefetched;
# gate: waiting after a denial (staleness gate, dataset); push: handing a group to the socket.
PHASES = ("generate", "weights", "lease", "gate", "push", "other")


class PhaseTimes:
    """Seconds per phase since `start`; `other` is the wall time no phase claimed."""

    def __init__(self, counter=None) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.start = time.monotonic()
        self.counter = counter  # a labelled prometheus Counter (phase), or None

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] += seconds
        if self.counter is not None:
            self.counter.labels(phase=phase).inc(seconds)

    @contextmanager
    def timed(self, phase: str):
        t = time.monotonic()
        try:
            yield
        finally:
            self.add(phase, time.monotonic() - t)

    def snapshot(self) -> dict[str, float]:
        wall = time.monotonic() - self.start
        out = dict(self.seconds)
        out["other"] = max(0.0, wall - sum(v for k, v in out.items() if k != "other"))
        return {"wall": round(wall, 4), **{k: round(v, 4) for k, v in out.items()}}

    def write(self, path: str) -> None:
        """The snapshot as JSON at `path` (written whole, then renamed into place)."""
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(self.snapshot()))
        tmp.replace(target)

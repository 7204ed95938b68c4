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


# Seconds between two points of the timeline: what clips the phases to another process's
# window (`asyncrl bench` takes the learner's RL loop) is good to about this much.
TIMELINE_SECONDS = 0.2


class PhaseTimes:
    """Seconds per phase since `start`; `other` is the wall time no phase claimed. A timeline
    of the running totals (epoch seconds, one point per TIMELINE_SECONDS at most) lets a
    reader take the phases within any window of the run."""

    def __init__(self, counter=None) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.start = time.monotonic()
        self.counter = counter  # a labelled prometheus Counter (phase), or None
        self.timeline: list[list] = [[time.time(), dict(self.seconds)]]

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] += seconds
        if self.counter is not None:
            self.counter.labels(phase=phase).inc(seconds)
        now = time.time()
        if now - self.timeline[-1][0] >= TIMELINE_SECONDS:
            self.timeline.append([now, dict(self.seconds)])

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
        """The snapshot and the timeline as JSON at `path` (written whole, then renamed into
        place)."""
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        timeline = [*self.timeline, [time.time(), dict(self.seconds)]]
        rounded = [[round(t, 3), {k: round(v, 4) for k, v in s.items()}] for t, s in timeline]
        tmp.write_text(json.dumps({**self.snapshot(), "timeline": rounded}))
        tmp.replace(target)


def phases_within(timeline: list, start: float, end: float) -> dict[str, float]:
    """Seconds per phase between epoch seconds `start` and `end`, from a `PhaseTimes` timeline
    (running totals, linear between its points); `other` is the window's time no phase
    claimed. A window reaching past the timeline is cut to it."""

    def at(t: float) -> dict[str, float]:
        if t <= timeline[0][0]:
            return timeline[0][1]
        for (t0, a), (t1, b) in zip(timeline, timeline[1:]):
            if t <= t1:
                w = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
                return {k: a.get(k, 0.0) + w * (b.get(k, 0.0) - a.get(k, 0.0)) for k in b}
        return timeline[-1][1]

    start, end = max(start, timeline[0][0]), min(end, timeline[-1][0])
    if end <= start:
        return dict.fromkeys(PHASES, 0.0)
    a, b = at(start), at(end)
    out = {k: round(b.get(k, 0.0) - a.get(k, 0.0), 4) for k in PHASES if k != "other"}
    out["other"] = round(max(0.0, end - start - sum(out.values())), 4)
    return out

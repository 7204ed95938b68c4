"""The group audit log: what happened to every group, on disk, so "nothing trained twice,
nothing accepted lost" can be checked after any number of crashes and resumes.

One JSON object per line in `output_dir/audit.jsonl` (`learner.audit_log: true`), appended by
every incarnation of the learner and flushed per line, so a kill -9 loses at most the line
being written (`check_audit` ignores a torn last line):

    {"e": "start", "pid": 123, "resumed_from": null | version}
    {"e": "accepted", "lease": id, "version": v}          a group entered the buffer
    {"e": "dropped", "lease": id, "reason": "stale"}        a buffered group left untrained
    {"e": "trained", "leases": [id, ...], "step": version}  groups taken for a step
    {"e": "snapshot", "version": v}                         the hub's state for checkpoint v
    {"e": "checkpoint", "version": v}                       checkpoint v is complete on disk
    {"e": "finished", "waiting": [id, ...]}                 normal end; groups still buffered

A resume rolls the history back to the snapshot of the checkpoint it loaded: what the killed
incarnation did after that moment was lost with its memory (the leases it held go out again),
so it neither counts as trained nor as lost. The snapshot is written under the hub's lock when
its state is taken, because the hub keeps accepting groups while the checkpoint is written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path


class AuditLog:
    """Appends audit events for one learner incarnation (rank 0 only)."""

    def __init__(self, path: str | Path, resumed_from: int | None):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (long-lived)
        self._write({"e": "start", "pid": os.getpid(), "resumed_from": resumed_from})

    def accepted(self, lease_id, version: int) -> None:
        self._write({"e": "accepted", "lease": lease_id, "version": version})

    def dropped(self, lease_id, reason: str) -> None:
        self._write({"e": "dropped", "lease": lease_id, "reason": reason})

    def trained(self, lease_ids: list, step: int) -> None:
        self._write({"e": "trained", "leases": list(lease_ids), "step": step})

    def snapshot(self, version: int) -> None:
        self._write({"e": "snapshot", "version": version})

    def checkpoint(self, version: int) -> None:
        self._write({"e": "checkpoint", "version": version})

    def finished(self, waiting: list) -> None:
        self._write({"e": "finished", "waiting": list(waiting)})

    def close(self) -> None:
        self._file.close()

    def _write(self, event: dict) -> None:
        # One write per line: with line buffering it reaches the OS whole or not at all
        # (up to a torn last line on kill -9, which the checker skips).
        self._file.write(json.dumps(event, separators=(",", ":")) + "\n")


@dataclass
class AuditReport:
    """What the committed history (after every rollback) says."""

    incarnations: int = 0
    accepted: int = 0
    trained: int = 0
    trained_twice: list = field(default_factory=list)
    lost: list = field(default_factory=list)  # accepted, never trained, dropped or left waiting
    dropped: int = 0
    finished: bool = False
    rollbacks: list = field(default_factory=list)  # (resumed from version, events undone)

    @property
    def ok(self) -> bool:
        return self.finished and not self.trained_twice and not self.lost


def read_events(path: str | Path) -> list[dict]:
    """The events of an audit file; a torn last line (kill -9 mid-write) is skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    events = []
    for i, line in enumerate(lines):
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise ValueError(f"{path}:{i + 1}: not a JSON line") from None
    return events


def check_audit(events: list[dict], max_reuse: int = 0) -> AuditReport:
    """Replay `events` with rollbacks at each resume and judge the committed history: no group
    trained more than `1 + max_reuse` times, every accepted group trained, dropped (counted,
    e.g. stale) or still waiting at the finish."""
    history: list[tuple[int, dict]] = []  # (index in events, event) of the committed story
    report = AuditReport()
    for n, ev in enumerate(events):
        if ev["e"] != "start":
            history.append((n, ev))
            continue
        report.incarnations += 1
        v = ev["resumed_from"]
        if v is None:
            continue
        # The last snapshot of v whose checkpoint was then completed (a kill mid-save leaves
        # a snapshot without one: resume took an older checkpoint).
        done = {i for i, e in enumerate(events[:n]) if e["e"] == "checkpoint" and e["version"] == v}
        marks = [
            k
            for k, (i, h) in enumerate(history)
            if h["e"] == "snapshot" and h["version"] == v and any(d > i for d in done)
        ]
        if not marks:
            raise ValueError(f"resumed from version {v}, which no complete checkpoint holds")
        report.rollbacks.append((v, len(history) - marks[-1] - 1))
        del history[marks[-1] + 1 :]

    accepted: dict = {}
    uses: dict = {}
    settled: set = set()
    for _, ev in history:
        kind = ev["e"]
        if kind == "accepted":
            accepted[ev["lease"]] = ev["version"]
        elif kind == "trained":
            for lid in ev["leases"]:
                uses[lid] = uses.get(lid, 0) + 1
                settled.add(lid)
        elif kind == "dropped":
            report.dropped += 1
            settled.add(ev["lease"])
        elif kind == "finished":
            report.finished = True
            settled.update(ev["waiting"])
    report.accepted = len(accepted)
    report.trained = len(uses)
    report.trained_twice = sorted(k for k, n in uses.items() if n > 1 + max_reuse)
    report.lost = sorted(k for k in accepted if k not in settled)
    return report

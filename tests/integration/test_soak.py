"""Soak: a learner and two generators launched separately for 30 minutes, one generator
(`gen-a`) killed (-9) and restarted every 2 minutes, the learner killed (-9) and resumed every
10 minutes; the other generator (`gen-b`) lives through it all, reconnecting to each new
learner.

Judged at the end, from the group audit log (`learner.audit_log`) and what was sampled:
0 groups trained twice, 0 accepted groups lost (each trained, dropped with a counted reason, or
still waiting at the finish), policy versions never going back within a learner's life and
each resume starting from a checkpoint no newer than what was reached, and a flat resident
memory over the last 10 minutes (least-squares slope under 1 MB/min for the learner's process
tree, over its last life, and for `gen-b`; a killed generator's short lives would measure its
warm-up). The figures are printed for the closing note, with the slopes of the C heap's bytes
in use and free but held (`asyncrl_process_heap_bytes`): a leak grows the first,
fragmentation the second.

`ASYNCRL_SOAK_SECONDS` (default 1800), `ASYNCRL_SOAK_GENERATOR_KILL` (120) and
`ASYNCRL_SOAK_LEARNER_KILL` (600) shorten it for a trial run; `ASYNCRL_SOAK_SET` adds
overrides (space-separated) to every process. Left out: killing the learner
at chosen moments of a save (tests/integration/test_checkpoint_kill.py does that).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from asyncrl.launch.memory import HEAP_STATES
from asyncrl.learner.audit import check_audit, read_events
from asyncrl.protocol.sockets import free_ports
from tests.integration.conftest import next_event, scrape, start_cli

pytestmark = pytest.mark.slow

DURATION = float(os.environ.get("ASYNCRL_SOAK_SECONDS", 1800))
GEN_KILL = float(os.environ.get("ASYNCRL_SOAK_GENERATOR_KILL", 120))
LEARNER_KILL = float(os.environ.get("ASYNCRL_SOAK_LEARNER_KILL", 600))
RSS_WINDOW = min(600.0, LEARNER_KILL)  # the last learner life, at most 10 minutes
RSS_WARMUP = 90.0  # model load, first publish and evaluation fill memory once


def _rss_tree(pid: int) -> float | None:
    """Resident bytes of a process and its children (the learner's reward workers)."""
    try:
        p = psutil.Process(pid)
        return p.memory_info().rss + sum(
            c.memory_info().rss for c in p.children(recursive=True) if c.is_running()
        )
    except psutil.Error:
        return None


def _slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, bytes) samples, in MB per minute; NaN (which fails
    every criterion) for fewer than 3 samples: a window too short to judge."""
    n = len(samples)
    if n < 3:
        return float("nan")
    mt = sum(t for t, _ in samples) / n
    mr = sum(r for _, r in samples) / n
    num = sum((t - mt) * (r - mr) for t, r in samples)
    den = sum((t - mt) ** 2 for t, _ in samples)
    return num / den * 60 / 1e6


def _floor_slope_mb_per_min(samples: list[tuple[float, float]], bin_s: float = 60.0) -> float:
    """Slope of the per-minute minimum: a leak raises the floor, while a transient peak (a
    checkpoint being written, a weight blob being built) only raises single samples, which can
    tilt a least-squares line fitted over a few minutes either way."""
    bins: dict[int, tuple[float, float]] = {}
    for t, r in samples:
        k = int((t - samples[0][0]) // bin_s)
        if k not in bins or r < bins[k][1]:
            bins[k] = (t, r)
    return _slope_mb_per_min(sorted(bins.values())) if len(bins) > 2 else 0.0


def _heap() -> dict[str, list[tuple[float, float]]]:
    return {state: [] for state in HEAP_STATES}


def _sample(url: str, now: float, heap: dict[str, list]) -> dict[str, float]:
    """One scrape of `url` (empty when it did not answer); appends its heap figures."""
    try:
        seen = scrape(url, timeout=5)
    except OSError:
        return {}
    for state in HEAP_STATES:
        value = seen.get(f'asyncrl_process_heap_bytes{{state="{state}"}}')
        if value is not None:
            heap[state].append((now, value))
    return seen


def _heap_slopes(heap: dict[str, list], window) -> dict[str, float]:
    """Slope per heap state over `window`; a state with too few samples (no mallinfo2, a
    process that did not answer) is left out."""
    out = {}
    for state in HEAP_STATES:
        samples = window(heap[state])
        if len(samples) > 2:
            out[state] = round(_slope_mb_per_min(samples), 3)
    return out


def _stop(proc: subprocess.Popen | None, sig=signal.SIGTERM, timeout: float = 120) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def test_soak_kills_and_resumes(small_overrides, tmp_path):
    control, rollouts, weights, metrics, steady_metrics = free_ports(5)
    common = [
        *small_overrides,
        f"learner.control_port={control}",
        f"learner.rollouts_port={rollouts}",
        f"learner.weights_port={weights}",
        f"learner.metrics_port={metrics}",
        "learner.audit_log=true",
        "train.steps=1000000",  # ended by SIGTERM at the deadline
        "train.checkpoint_every=50",
        "train.keep_checkpoints=2",
        "buffer.max_staleness=2",
        "buffer.filter_zero_variance=false",  # every group is one the audit must follow
        # Extra overrides for a diagnostic soak, e.g. "reward.isolation=process".
        *os.environ.get("ASYNCRL_SOAK_SET", "").split(),
    ]
    out = Path(next(a.split("=", 1)[1] for a in common if a.startswith("learner.output")))
    url = f"http://127.0.0.1:{metrics}/metrics"
    gen_args = [*common, f"generator.learner=tcp://127.0.0.1:{control}", "generator.metrics_port=0"]
    gen_args.append("generator.reconnect_seconds=2")

    steady_url = f"http://127.0.0.1:{steady_metrics}/metrics"

    def start_generator(name: str, n: int) -> subprocess.Popen:
        args = [*gen_args, f"generator.generator_id={name}"]
        if name == "gen-b":
            args.append(f"generator.metrics_port={steady_metrics}")
        return start_cli(["generator", *args], tmp_path / f"{name}-{n}.log")

    # Per learner life: resumed version, versions seen, (time, bytes) of resident memory and
    # of the heap in use and free.
    lives: list[dict] = []

    def start_learner(resume: bool) -> subprocess.Popen:
        n = len(lives) + 1
        proc = start_cli(
            ["learner", *common, *(["--resume"] if resume else [])], tmp_path / f"learner-{n}.log"
        )
        ready = next_event(proc, "learner_ready")
        lives.append({"resumed": ready["policy_version"], "versions": [], "rss": [], **_heap()})
        return proc

    learner = start_learner(resume=False)
    gens = {name: start_generator(name, 0) for name in ("gen-a", "gen-b")}
    gen_rss: list[tuple[float, float]] = []  # gen-b's, its whole life
    gen_heap = _heap()
    gen_kills = learner_kills = 0
    t0 = time.time()
    next_gen_kill, next_learner_kill = t0 + GEN_KILL, t0 + LEARNER_KILL
    try:
        while time.time() < t0 + DURATION:
            now = time.time()
            if now >= next_learner_kill:
                learner.send_signal(signal.SIGKILL)
                learner.wait(timeout=30)
                learner_kills += 1
                learner = start_learner(resume=True)
                next_learner_kill = now + LEARNER_KILL
            if now >= next_gen_kill:
                _stop(gens["gen-a"], signal.SIGKILL)
                gen_kills += 1
                gens["gen-a"] = start_generator("gen-a", gen_kills)
                next_gen_kill = now + GEN_KILL
            life = lives[-1]
            seen = _sample(url, now, life)
            if seen:
                life["versions"].append(seen.get("asyncrl_policy_version", -1))
            _sample(steady_url, now, gen_heap)
            rss = _rss_tree(learner.pid)
            if rss is not None:
                life["rss"].append((now, rss))
            rss = _rss_tree(gens["gen-b"].pid)
            if rss is not None:
                gen_rss.append((now, rss))
            assert learner.poll() is None, (tmp_path / f"learner-{len(lives)}.log").read_text()
            time.sleep(5)
        _stop(learner, signal.SIGTERM, timeout=600)
        assert learner.returncode == 0, (tmp_path / f"learner-{len(lives)}.log").read_text()[-3000:]
    finally:
        _stop(learner, signal.SIGKILL)
        for proc in gens.values():
            _stop(proc)

    report = check_audit(read_events(out / "audit.jsonl"))
    summary = json.loads((out / "summary.json").read_text())
    end = time.time()
    # The last 10 minutes (at most), from RSS_WARMUP into the learner's last life; gen-b was
    # started with the first learner, so its window is the same span, not a young process.
    start = max(end - RSS_WINDOW, lives[-1]["rss"][0][0] + RSS_WARMUP)

    def window(samples: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(t, r) for t, r in samples if t >= start]

    learner_slope = _slope_mb_per_min(window(lives[-1]["rss"]))
    gen_slope = _slope_mb_per_min(window(gen_rss))
    if os.environ.get("ASYNCRL_SOAK_SAMPLES"):  # the raw curves, to look at a failed slope
        Path(os.environ["ASYNCRL_SOAK_SAMPLES"]).write_text(
            json.dumps({"learner": lives, "gen-b": {"rss": gen_rss, **gen_heap}})
        )
    figures = {
        "seconds": round(end - t0),
        "generator_kills": gen_kills,
        "learner_kills": learner_kills,
        "final_version": summary["policy_version"],
        "accepted": report.accepted,
        "trained": report.trained,
        "dropped_after_accept": report.dropped,
        "trained_twice": len(report.trained_twice),
        "accepted_lost": len(report.lost),
        "rollbacks": report.rollbacks,
        "learner_rss_mb": round(lives[-1]["rss"][-1][1] / 1e6),
        "learner_rss_slope_mb_per_min": round(learner_slope, 3),
        "learner_rss_floor_slope_mb_per_min": round(
            _floor_slope_mb_per_min(window(lives[-1]["rss"])), 3
        ),
        "learner_heap_slope_mb_per_min": _heap_slopes(lives[-1], window),
        "generator_rss_slope_mb_per_min": round(gen_slope, 3),
        "generator_heap_slope_mb_per_min": _heap_slopes(gen_heap, window),
    }
    print("SOAK", json.dumps(figures))

    assert report.finished and report.incarnations == learner_kills + 1
    assert report.trained_twice == [], report.trained_twice[:10]
    assert report.lost == [], report.lost[:10]
    for n, (prev, life) in enumerate(zip(lives, lives[1:]), start=1):
        seen = [v for v in prev["versions"] if v >= 0]
        assert seen == sorted(seen), "policy version went back within a learner's life"
        # Resumed from a checkpoint of what the killed life reached (its last progress line
        # says; the 5 s samples may miss the last steps), never from an older lineage.
        steps = re.findall(r"step (\d+)/", (tmp_path / f"learner-{n}.log").read_text())
        reached = max([int(x) for x in steps] + seen + [prev["resumed"]])
        assert prev["resumed"] <= life["resumed"] <= reached
    assert summary["max_staleness_seen"] <= 2
    assert learner_slope < 1.0, figures
    assert gen_slope < 1.0, figures

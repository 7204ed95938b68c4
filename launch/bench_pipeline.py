"""`asyncrl bench --only pipeline`: the loop's throughput at η = 4 and η = 0, side by side,
and where the async loop's lost time goes.

Each run is `asyncrl local` on the tiny task, learner and generator pinned to separate cores;
runs come in adjacent pairs (η = 4, then η = 0), and every figure is the median over the
pairs. A run's summary carries the learner's time by phase (wait, batch, update, publish,
...) and the hub thread's CPU time; each generator leaves its own time by phase (generate,
weights, lease, gate, push, other), clipped to the learner's RL loop. From those:

- `pipeline_efficiency_async`: trained tokens/s at η = 4 over min(generation-only,
  training-only) tokens/s, the latter two being the generators' and the learner's busy-time
  rates measured inside the same loop.
- `async_over_sync` (η = 4 over η = 0 of the same pair) beside `ideal_overlap_ratio`:
  min(gen, train) over the serial rate 1 / (1/gen + 1/train), what a perfect overlap would
  give over a perfect synchronous loop; `async_over_sync_of_ideal` is their quotient.
- `overlap_slowdown_training` / `_generation`: how much slower each side works beside the
  other (η = 4) than in turns (η = 0), the shared machine's cost of overlapping, which
  `async_over_sync` pays and `ideal_overlap_ratio` does not see.
- The two factors of `async_over_sync_of_ideal` (their product, exactly):
  `efficiency_async_over_sync`, each loop's efficiency against its own ideal (the pipeline's
  doing), and `serial_rate_async_over_sync`, the serial rate of the η = 4 run's two sides over
  the η = 0 run's (the machine's: below 1 when the sides slow each other).
- `pipeline_losses`: the median async run's seconds per cause on each side, and which side
  binds.
- `machine_busy`: whether the machine's speed (`speed_probe`, a fixed interpreter-bound
  workload timed before every run) drifted by more than `DRIFT_LIMIT` over the bench
  (`calibration_drift`): the pairs then ran on unlike machines. `pipeline_runs` lists every
  run's rates and probe, `pipeline_pairs` every pair's figures.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from asyncrl.generators.phases import phases_within

# Relative change of a calibration rate between runs past which the machine is called busy.
DRIFT_LIMIT = 0.10


def _run(run_dir: Path, eta: int, steps: int, extra: list[str]) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "asyncrl.launch.cli",
        "local",
        f"train.steps={steps}",
        "eval.every=0",
        "data.eval_size=16",
        "buffer.filter_zero_variance=false",  # every generated group is trained
        "local.pin_cores=true",
        "local.generators=1",
        f"buffer.max_staleness={eta}",
        f"learner.output_dir={run_dir}",
        *extra,
        "--log-level",
        "WARNING",
    ]
    load_before = os.getloadavg()[0]
    probe = speed_probe()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"bench loop at eta={eta} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["speed_probe"] = probe
    summary["generator_phases"] = []
    for path in sorted(run_dir.glob("generator-*-phases.json")):
        phases = json.loads(path.read_text())
        if phases.get("timeline") and "rl_started_at" in summary:
            # Only the learner's loop counts: not the start-up before it, nor the exit after.
            start, end = summary["rl_started_at"], summary["rl_ended_at"]
            phases = phases_within(phases["timeline"], start, end)
        summary["generator_phases"].append(phases)
    summary["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return summary


def losses(run: dict) -> dict:
    """Seconds per cause in one run: what kept the binding side from working all the time."""
    gen = run["generation_tokens_per_second"]
    train = run["training_tokens_per_second"]
    rl = run["rl_seconds"]
    trained = run["trained_tokens_per_second"] * rl
    phases = run.get("phase_seconds", {})
    learner_other = rl - sum(phases.values())
    out: dict = {
        "bottleneck": "generation" if gen <= train else "training",
        # Wall time beyond what the binding side needed for the trained tokens.
        "lost_seconds": round(rl - trained / max(min(gen, train), 1e-9), 3),
        "rl_seconds": rl,
        # The first step's wait (the pipeline filling at start, once per run) apart from the
        # rest (the generators falling behind).
        "learner_waiting_for_first_groups": run.get("first_wait_seconds", 0.0),
        "learner_waiting_for_groups": round(
            phases.get("wait", 0.0) - run.get("first_wait_seconds", 0.0), 4
        ),
        "learner_building_batches": phases.get("batch", 0.0),
        "learner_checkpoint_and_tracking": phases.get("checkpoint_report", 0.0),
        "learner_loop_other": round(max(learner_other, 0.0), 3),
        # On the step's path, counted as training time: it lowers training-only tokens/s.
        "publish_on_step_path": phases.get("publish", 0.0),
        # The hub thread's CPU on the learner's core(s): taken from training when they share.
        "hub_thread_cpu": run.get("hub_cpu_seconds", 0.0),
    }
    cpu = run.get("learner_cpu_seconds") or {}
    if cpu:
        # All the learner process's CPU besides the training thread during the loop (the hub's,
        # reward scoring, ZeroMQ's I/O, the metrics server, reward workers): pinned to the
        # learner's cores, at η > 0 it runs while training does and slows it.
        out["learner_cpu_beside_training"] = round(
            cpu.get("other_threads", 0.0) + cpu.get("child_processes", 0.0), 3
        )
    gens = run.get("generator_phases", [])
    if gens:
        for key in ("weights", "lease", "gate", "push", "other"):
            out[f"generator_{key}"] = round(sum(g.get(key, 0.0) for g in gens), 3)
        generated = sum(g.get("generate", 0.0) for g in gens)
        # Generated but not trained (in flight or waiting when the run ended): generator time
        # that bought nothing.
        out["generator_untrained_work"] = round(max(0.0, generated - trained / max(gen, 1e-9)), 3)
    return out


def speed_probe() -> float:
    """Seconds of a fixed pure-Python workload, the best of 10 tries over 2.5 s: the
    machine's speed for the interpreter-bound work this loop does. Taken before every run;
    how far it drifts says whether the machine changed under the bench. The window is long
    enough that a second's disturbance (a run's exit, the kernel's housekeeping) leaves some
    tries clean, so only a machine that stays slower reads as changed."""
    best = float("inf")
    for k in range(10):
        time.sleep(0.25 if k else 0.0)
        t = time.perf_counter()
        x = 0
        for i in range(100_000):
            x += i * i % 7
        best = min(best, time.perf_counter() - t)
    return best


def bench_pipeline(quick: bool, workdir: Path, extra: list[str] | None = None) -> dict:
    """`asyncrl local` at η = 4 then η = 0, the same layout, in adjacent pairs (3; 1 with
    `quick`): each pair's runs share the machine's conditions as closely as can be."""
    # 240 steps: the pipeline's filling at the start (the first step's wait, a fixed cost)
    # stays under 1 % of the loop, and each run's rates average over more steps.
    steps = 40 if quick else 240
    pairs = []
    for rep in range(1 if quick else 3):
        a = _run(workdir / f"eta4-{rep}", 4, steps, extra or [])
        pairs.append((a, _run(workdir / f"eta0-{rep}", 0, steps, extra or [])))
    return figures(pairs)


def _serial(run: dict) -> float:
    gen, train = run["generation_tokens_per_second"], run["training_tokens_per_second"]
    return 1.0 / (1.0 / gen + 1.0 / train)


def pair_figures(a: dict, s: dict) -> dict:
    """One pair's figures: the async run `a` (η = 4) against the sync run `s` (η = 0)."""
    gen, train = a["generation_tokens_per_second"], a["training_tokens_per_second"]
    ideal = min(gen, train) / _serial(a)
    ratio = a["trained_tokens_per_second"] / s["trained_tokens_per_second"]
    return {
        "pipeline_efficiency_async": a["trained_tokens_per_second"] / min(gen, train),
        "async_over_sync": ratio,
        "ideal_overlap_ratio": ideal,
        "async_over_sync_of_ideal": ratio / ideal,
        # The synchronous loop against its own ideal, the serial rate of its own run.
        "pipeline_efficiency_sync": s["trained_tokens_per_second"] / _serial(s),
        # How much slower each side works while the other works beside it (at η = 0 they
        # take turns): the shared machine's cost of overlap, which `ideal_overlap_ratio`
        # (taken at the overlapped rates) does not see and `async_over_sync` pays.
        "overlap_slowdown_training": 1.0 - train / s["training_tokens_per_second"],
        "overlap_slowdown_generation": 1.0 - gen / s["generation_tokens_per_second"],
        # async_over_sync_of_ideal = this * the next (see the module's docstring).
        "efficiency_async_over_sync": (a["trained_tokens_per_second"] / min(gen, train))
        / (s["trained_tokens_per_second"] / _serial(s)),
        "serial_rate_async_over_sync": _serial(a) / _serial(s),
    }


def figures(pairs: list[tuple[dict, dict]]) -> dict:
    """Each figure the median over the pairs; the loss breakdown of the async run whose
    efficiency is the median; the busy verdict from the speed probes."""
    per = [pair_figures(a, s) for a, s in pairs]
    out: dict = {k: round(statistics.median(p[k] for p in per), 3) for k in per[0]}
    by_eff = sorted(range(len(pairs)), key=lambda i: per[i]["pipeline_efficiency_async"])
    a, s = pairs[by_eff[(len(pairs) - 1) // 2]]  # the pair of the median efficiency
    out["async_trained_tokens_per_second"] = a["trained_tokens_per_second"]
    out["generation_only_tokens_per_second"] = a["generation_tokens_per_second"]
    out["training_only_tokens_per_second"] = a["training_tokens_per_second"]
    every = [r for pair in pairs for r in pair]
    probes = [r["speed_probe"] for r in every if r.get("speed_probe")]
    drift = (max(probes) - min(probes)) / max(probes) if probes else 0.0
    out["calibration_drift"] = round(drift, 3)
    out["machine_busy"] = drift > DRIFT_LIMIT
    out["load_average"] = [r["load_average"] for r in every]
    # Every run's own rates, so a reader sees the spread the medians sum up.
    out["pipeline_runs"] = [
        {
            "eta": r["max_staleness"],
            "trained": r["trained_tokens_per_second"],
            "generation": r["generation_tokens_per_second"],
            "training": r["training_tokens_per_second"],
            "learner_wait": r.get("phase_seconds", {}).get("wait", 0.0),
            "rl_seconds": r["rl_seconds"],
            "speed_probe": round(r.get("speed_probe", 0.0), 4),
        }
        for r in every
    ]
    out["pipeline_pairs"] = [{k: round(v, 3) for k, v in p.items()} for p in per]
    out["pipeline_losses"] = losses(a)
    out["staleness"] = {f"eta={r['max_staleness']}": r["staleness_counts"] for r in (a, s)}
    return out

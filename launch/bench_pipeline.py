"""`asyncrl bench --only pipeline`: the loop's throughput at η = 4 and η = 0, side by side,
and where the async loop's lost time goes.

Each run is `asyncrl local` on the tiny task, learner and generator pinned to separate cores.
Its summary carries the learner's time by phase (wait, batch, update, publish, ...) and the
hub thread's CPU time; each generator leaves its own time by phase (generate, weights, lease,
gate, push, other). From those:

- `pipeline_efficiency_async`: trained tokens/s at η = 4 over min(generation-only,
  training-only) tokens/s, the latter two being the generators' and the learner's busy-time
  rates measured inside the same loop.
- `async_over_sync` (η = 4 over η = 0) beside `ideal_overlap_ratio`: min(gen, train) over the
  serial rate 1 / (1/gen + 1/train), what a perfect overlap would give over a perfect
  synchronous loop; `async_over_sync_of_ideal` is their quotient.
- `pipeline_losses`: the async run's seconds per cause on each side, and which side binds.
- `machine_busy`: whether the generation-only or training-only rate drifted between the
  runs by more than `DRIFT_LIMIT` (the machine's load changed under the bench, so the ratios
  compare unlike conditions), with the load averages seen.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"bench loop at eta={eta} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["generator_phases"] = [
        json.loads(p.read_text()) for p in sorted(run_dir.glob("generator-*-phases.json"))
    ]
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
        "learner_waiting_for_groups": phases.get("wait", 0.0),
        "learner_building_batches": phases.get("batch", 0.0),
        "learner_checkpoint_and_tracking": phases.get("checkpoint_report", 0.0),
        "learner_loop_other": round(max(learner_other, 0.0), 3),
        # On the step's path, counted as training time: it lowers training-only tokens/s.
        "publish_on_step_path": phases.get("publish", 0.0),
        # The hub thread's CPU on the learner's core(s): taken from training when they share.
        "hub_thread_cpu": run.get("hub_cpu_seconds", 0.0),
    }
    gens = run.get("generator_phases", [])
    if gens:
        for key in ("weights", "lease", "gate", "push", "other"):
            out[f"generator_{key}"] = round(sum(g.get(key, 0.0) for g in gens), 3)
        generated = sum(g.get("generate", 0.0) for g in gens)
        # Generated but not trained (in flight or waiting when the run ended): generator time
        # that bought nothing.
        out["generator_untrained_work"] = round(max(0.0, generated - trained / max(gen, 1e-9)), 3)
    return out


def bench_pipeline(quick: bool, workdir: Path, extra: list[str] | None = None) -> dict:
    """`asyncrl local` at η = 4 and η = 0 with the same layout, alternating."""
    steps = 40 if quick else 120
    runs: dict[int, list[dict]] = {4: [], 0: []}
    for rep in range(1 if quick else 2):
        for eta in (4, 0):
            runs[eta].append(_run(workdir / f"eta{eta}-{rep}", eta, steps, extra or []))
    return figures(runs)


def figures(runs: dict[int, list[dict]]) -> dict:
    best = {eta: max(r, key=lambda s: s["trained_tokens_per_second"]) for eta, r in runs.items()}
    a, s = best[4], best[0]
    gen, train = a["generation_tokens_per_second"], a["training_tokens_per_second"]
    capacity = min(gen, train)
    serial = 1.0 / (1.0 / gen + 1.0 / train)
    ideal = capacity / serial
    ratio = a["trained_tokens_per_second"] / s["trained_tokens_per_second"]
    out: dict = {
        "pipeline_efficiency_async": round(a["trained_tokens_per_second"] / capacity, 3),
        "async_over_sync": round(ratio, 3),
        "ideal_overlap_ratio": round(ideal, 3),
        "async_over_sync_of_ideal": round(ratio / ideal, 3),
        # The synchronous loop against its own ideal, the serial rate of its own run.
        "pipeline_efficiency_sync": round(
            s["trained_tokens_per_second"]
            / (
                1.0
                / (1.0 / s["generation_tokens_per_second"] + 1.0 / s["training_tokens_per_second"])
            ),
            3,
        ),
        "async_trained_tokens_per_second": a["trained_tokens_per_second"],
        "sync_trained_tokens_per_second": s["trained_tokens_per_second"],
        "generation_only_tokens_per_second": gen,
        "training_only_tokens_per_second": train,
    }
    drift = 0.0
    every = [r for rs in runs.values() for r in rs]
    for key in ("generation_tokens_per_second", "training_tokens_per_second"):
        values = [r[key] for r in every]
        drift = max(drift, (max(values) - min(values)) / max(max(values), 1e-9))
    out["calibration_drift"] = round(drift, 3)
    out["machine_busy"] = drift > DRIFT_LIMIT
    out["load_average"] = {
        f"eta={eta}": [r["load_average"] for r in rs] for eta, rs in runs.items()
    }
    # Every run's own rates, so a reader can see the spread that `calibration_drift` sums up.
    out["pipeline_runs"] = [
        {
            "eta": eta,
            "trained": r["trained_tokens_per_second"],
            "generation": r["generation_tokens_per_second"],
            "training": r["training_tokens_per_second"],
            "learner_wait": r.get("phase_seconds", {}).get("wait", 0.0),
            "rl_seconds": r["rl_seconds"],
        }
        for eta, rs in runs.items()
        for r in rs
    ]
    out["pipeline_losses"] = losses(a)
    out["staleness"] = {f"eta={eta}": best[eta]["staleness_counts"] for eta in best}
    return out

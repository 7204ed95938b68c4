"""`asyncrl bench --only learning`: what η buys in learning, not only in tokens/s.

One `asyncrl local` run on the tiny task per (η, objective, seed), all with the same step
budget (so the same number of samples), learner and generators pinned to separate cores,
held-out accuracy every `eval_every` steps. The evaluations are deferred (`eval.deferred`):
the learner keeps a copy of the policy at each point and evaluates the copies after its last
step, so the loop never pauses (a paused learner would let η > 0 generators fill the buffer
for free). From each run's metrics.jsonl: accuracy against RL wall time, counted from the
moment the first generator joined (the fleet's start-up is the same at every η and not what
η buys), and against samples trained. Figures, per objective, relative to η = 0 of the same
objective, over the mean of the seeds:

- `time_to_target_speedup`: η = 0's wall time to first reach `target` held-out accuracy
  (linear between the evaluations around the crossing) over η's (> 1: η gets there sooner);
  None where a run never reaches it.
- `final_accuracy_ratio`: final accuracy at the same sample budget over η = 0's.
- `rl_seconds_speedup`: η = 0's RL wall time for the whole budget over η's.
- `overlap_bound_speedup` (per objective, from η = 0's own phases): the most any η could buy
  over η = 0 if the learner never waited for groups. At η > 0 the learner still does all of
  its own work (training, building batches, publishing; overlap only slows it) and the first
  step's wait (the pipeline filling), so η = 0's RL seconds over those is an upper bound. A
  speedup well below it is lost to the overlap or to the generators; a bound near 1 means
  training binds and η has little to hide.

Written as `learning.json` and `learning.png` (matplotlib, the `bench` extra) in `out_dir`.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

ETAS = (0, 1, 2, 4, 8)
OBJECTIVES = ("ppo", "decoupled_ppo")
SEEDS = (0, 1)


def curve(
    metrics_jsonl: Path,
    samples_per_step: int,
    rl_seconds: float | None = None,
    fleet_wait: float = 0.0,
) -> list[dict]:
    """[{step, samples, seconds, accuracy}] at every evaluation, `seconds` counted from the
    first record (RL start) with the evaluations' own time taken out, and after the start the
    loop's `fleet_wait` (seconds before any generator had joined: start-up, the same at every
    η) too. The final evaluation (after the last step, no `eval_seconds` of its own) is written
    after the checkpoint and export: its time is the loop's `rl_seconds` when given."""
    points, t0, eval_total = [], None, 0.0
    for line in metrics_jsonl.read_text().splitlines():
        rec = json.loads(line)
        if t0 is None:
            t0 = rec["time"]
        eval_total += rec.get("eval_seconds", 0.0)
        if "eval_accuracy" in rec:
            seconds = rec["time"] - t0 - eval_total
            if "rl_elapsed_seconds" in rec:  # eval.deferred: taken at that point of the loop
                seconds = rec["rl_elapsed_seconds"]
            elif rl_seconds is not None and rec["step"] > 0 and "eval_seconds" not in rec:
                seconds = rl_seconds - eval_total
            if rec["step"] > 0:
                seconds -= fleet_wait
            points.append(
                {
                    "step": rec["step"],
                    "samples": rec["step"] * samples_per_step,
                    "seconds": round(max(0.0, seconds), 3),
                    "accuracy": rec["eval_accuracy"],
                }
            )
    return sorted(points, key=lambda p: p["step"])  # deferred evaluations come after the run


def time_to(points: list[dict], target: float) -> float | None:
    """Wall seconds at which the curve first reaches `target`: linear between the last
    evaluation below it and the first at or above it (None if it never does)."""
    for before, p in zip([None, *points], points):
        if p["accuracy"] >= target:
            if before is None or p["accuracy"] == before["accuracy"]:
                return p["seconds"]
            share = (target - before["accuracy"]) / (p["accuracy"] - before["accuracy"])
            return round(before["seconds"] + share * (p["seconds"] - before["seconds"]), 3)
    return None


def overlap_bound(loops: list[dict]) -> float | None:
    """The most η could buy over η = 0 runs (`loops`: each run's `rl`, `wait`, `first_wait`
    and `fleet_wait` seconds, from its summary): RL seconds over the learner's own work plus
    the first step's wait, mean over runs."""
    bounds = []
    for lp in loops:
        rl, wait, first = (lp[k] - lp["fleet_wait"] for k in ("rl", "wait", "first_wait"))
        own = first + rl - wait
        if own > 0:
            bounds.append(rl / own)
    return round(statistics.mean(bounds), 3) if bounds else None


def summarise(runs: dict, target: float, loops: dict | None = None) -> dict:
    """Per objective and η: mean final accuracy and time to target over seeds, and both
    relative to η = 0 (`runs[objective][eta]` is a list of curves, one per seed;
    `loops[objective][eta]` the runs' loop seconds, for `overlap_bound`)."""
    out: dict = {}
    for objective, by_eta in runs.items():
        eta0_loops = (loops or {}).get(objective, {}).get(0, [])
        bound = overlap_bound(eta0_loops) if eta0_loops else None
        rows = {}
        for eta, curves in by_eta.items():
            finals = [c[-1]["accuracy"] for c in curves if c]
            times = [time_to(c, target) for c in curves]
            reached = [t for t in times if t is not None]
            rows[eta] = {
                "final_accuracy": round(statistics.mean(finals), 4) if finals else None,
                "final_accuracy_seeds": finals,
                "time_to_target": (
                    round(statistics.mean(reached), 2) if len(reached) == len(times) else None
                ),
                "time_to_target_seeds": times,
                "rl_seconds": [c[-1]["seconds"] for c in curves if c],
            }
        base = rows.get(0)
        for row in rows.values():
            row["time_to_target_speedup"] = (
                round(base["time_to_target"] / row["time_to_target"], 3)
                if base and base["time_to_target"] and row["time_to_target"]
                else None
            )
            row["rl_seconds_speedup"] = (
                round(statistics.mean(base["rl_seconds"]) / statistics.mean(row["rl_seconds"]), 3)
                if base and base["rl_seconds"] and row["rl_seconds"]
                else None
            )
            row["overlap_bound_speedup"] = bound
            row["final_accuracy_ratio"] = (
                round(row["final_accuracy"] / base["final_accuracy"], 3)
                if base and base["final_accuracy"] and row["final_accuracy"] is not None
                else None
            )
        out[objective] = {f"eta={eta}": row for eta, row in sorted(rows.items())}
    return out


def plot(runs: dict, path: Path, target: float) -> bool:
    """Accuracy vs wall time and vs samples, one colour per η, one row per objective; False
    (nothing written) without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        logger.warning("matplotlib not installed (pip install 'asyncrl[bench]'): no plot")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objectives = list(runs)
    fig, axes = plt.subplots(len(objectives), 2, figsize=(11, 3.6 * len(objectives)), squeeze=False)
    colours = plt.get_cmap("viridis")
    etas = sorted({eta for by_eta in runs.values() for eta in by_eta})
    for r, objective in enumerate(objectives):
        for eta, curves in sorted(runs[objective].items()):
            colour = colours(etas.index(eta) / max(len(etas) - 1, 1))
            for k, c in enumerate(curves):
                label = f"η={eta}" if k == 0 else None
                for col, x in ((0, "seconds"), (1, "samples")):
                    axes[r][col].plot(
                        [p[x] for p in c],
                        [p["accuracy"] for p in c],
                        color=colour,
                        alpha=0.85,
                        label=label,
                        linestyle="-" if k == 0 else "--",
                    )
        wall = "RL wall seconds from the first generator's hello"
        for col, xlabel in ((0, wall), (1, "samples trained")):
            ax = axes[r][col]
            ax.axhline(target, color="grey", linewidth=0.6)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("held-out accuracy")
            ax.set_title(f"{objective}")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def bench_learning(
    quick: bool,
    etas: tuple[int, ...] | None = None,
    objectives: tuple[str, ...] | None = None,
    seeds: tuple[int, ...] | None = None,
    steps: int | None = None,
    eval_every: int | None = None,
    target: float = 0.7,
    out_dir: str | None = None,
    extra: tuple[str, ...] = (),
) -> dict:
    """The grid, each run in its own output directory under `out_dir` (default: a temporary
    directory; the JSON and PNG then go to the current directory's `bench-learning/`)."""
    # quick: one seed of decoupled_ppo at η = 0 and 4, a smoke test more than a figure.
    etas = etas or ((0, 4) if quick else ETAS)
    objectives = objectives or (("decoupled_ppo",) if quick else OBJECTIVES)
    seeds = seeds or ((0,) if quick else SEEDS)
    steps = steps or (30 if quick else 120)
    eval_every = eval_every or max(1, steps // 40)
    out = Path(out_dir or "bench-learning")
    out.mkdir(parents=True, exist_ok=True)
    runs: dict = {o: {} for o in objectives}
    loops: dict = {o: {} for o in objectives}
    with tempfile.TemporaryDirectory(prefix="asyncrl-learning-") as tmp:
        for seed in seeds:
            for objective in objectives:
                for eta in etas:
                    run_dir = Path(tmp) / f"{objective}-eta{eta}-seed{seed}"
                    c, per_step = _run(run_dir, eta, objective, seed, steps, eval_every, extra)
                    summary = json.loads((run_dir / "summary.json").read_text())
                    rl, fleet = summary["rl_seconds"], summary.get("fleet_wait_seconds", 0.0)
                    runs[objective].setdefault(eta, []).append(curve(c, per_step, rl, fleet))
                    loops[objective].setdefault(eta, []).append(
                        {
                            "rl": rl,
                            "wait": summary["phase_seconds"].get("wait", 0.0),
                            "first_wait": summary.get("first_wait_seconds", 0.0),
                            "fleet_wait": fleet,
                        }
                    )
                    # Kept after every run: a grid cut short still leaves its curves.
                    partial = {o: {str(e): c for e, c in by.items()} for o, by in runs.items()}
                    (out / "learning.partial.json").write_text(json.dumps(partial))
                    logger.info(
                        "learning %s eta=%d seed=%d: final accuracy %s",
                        objective,
                        eta,
                        seed,
                        runs[objective][eta][-1][-1:],
                    )
    result = {
        "grid": {
            "etas": list(etas),
            "objectives": list(objectives),
            "seeds": list(seeds),
            "steps": steps,
            "eval_every": eval_every,
            "target": target,
        },
        "figures": summarise(runs, target, loops),
        # Each run's loop seconds (RL, waiting, the first wait, the fleet's start-up).
        "loops": {o: {str(e): lp for e, lp in by.items()} for o, by in loops.items()},
        "curves": {o: {str(e): c for e, c in by.items()} for o, by in runs.items()},
    }
    (out / "learning.json").write_text(json.dumps(result, indent=1))
    plotted = plot(runs, out / "learning.png", target)
    return {
        "learning": result["figures"],
        "learning_json": str(out / "learning.json"),
        "learning_png": str(out / "learning.png") if plotted else None,
    }


def _run(run_dir, eta, objective, seed, steps, eval_every, extra) -> tuple[Path, int]:
    from asyncrl.launch.config import load_config
    from asyncrl.learner.loop_defaults import optimizer_steps_per_batch

    overrides = [
        f"train.steps={steps}",
        f"eval.every={eval_every}",
        "eval.deferred=true",  # the loop never pauses: a pause lets generators run ahead
        "local.pin_cores=true",
        f"buffer.max_staleness={eta}",
        f"objective.name={objective}",
        f"train.seed={seed}",
        f"generator.seed={seed}",
        f"data.shuffle_seed={seed}",
        "learner.report_to=[jsonl]",
        f"learner.output_dir={run_dir}",
        *extra,
    ]
    cfg = load_config("tiny-cpu", list(overrides))
    steps_per_batch = optimizer_steps_per_batch(cfg.train)
    if steps_per_batch > 1 and not any(x.startswith("train.lr=") for x in extra):
        # An objective whose loop defaults take several optimizer steps per batch (decoupled_ppo:
        # 4 mini-batches) gets the preset's learning rate divided by them, so each sample moves
        # the policy about as far as under ppo (docs/objectives.md).
        overrides.append(f"train.lr={cfg.train.lr / steps_per_batch:g}")
    cmd = [sys.executable, "-m", "asyncrl.launch.cli", "local", *overrides]
    env = dict(os.environ)
    proc = subprocess.run(
        [*cmd, "--log-level", "WARNING"], capture_output=True, text=True, timeout=3600, env=env
    )
    if proc.returncode != 0:
        raise RuntimeError(f"learning run {run_dir.name} failed:\n{proc.stderr[-3000:]}")
    return run_dir / "metrics.jsonl", cfg.train.groups_per_step * cfg.sampling.group_size

"""The pipeline bench's loss breakdown and busy verdict, and the learning bench's curves and
relative figures, from hand-made run summaries (launch/bench_pipeline.py,
launch/bench_learning.py)."""

from __future__ import annotations

import json

import pytest

from asyncrl.generators.phases import phases_within
from asyncrl.launch.bench_learning import curve, summarise, time_to
from asyncrl.launch.bench_pipeline import figures, losses


def _run(trained, gen, train, rl=10.0, **kw):
    return {
        "trained_tokens_per_second": trained,
        "generation_tokens_per_second": gen,
        "training_tokens_per_second": train,
        "rl_seconds": rl,
        "staleness_counts": {"0": 1},
        "load_average": [0.1, 0.2],
        **kw,
    }


def test_losses_name_the_binding_side_and_its_idle_time():
    run = _run(
        90.0,
        100.0,
        200.0,
        phase_seconds={"wait": 4.0, "batch": 0.5, "update": 4.0, "publish": 0.5},
        hub_cpu_seconds=0.3,
        generator_phases=[{"generate": 9.5, "weights": 0.2, "lease": 0.1, "push": 0.1}],
    )
    run["first_wait_seconds"] = 1.5
    out = losses(run)
    # Generation binds (100 < 200). 900 tokens trained need 9 s of generation: 1 s lost of 10.
    assert out["bottleneck"] == "generation" and out["lost_seconds"] == pytest.approx(1.0)
    # Of the 4 s waited, 1.5 s filled the pipeline at the first step; 2.5 s came later.
    assert out["learner_waiting_for_first_groups"] == 1.5
    assert out["learner_waiting_for_groups"] == pytest.approx(2.5)
    # Learner: 10 - (4 + 0.5 + 4 + 0.5) = 1 s in its loop outside the phases.
    assert out["learner_loop_other"] == pytest.approx(1.0)
    assert out["publish_on_step_path"] == 0.5 and out["hub_thread_cpu"] == 0.3
    # 9.5 s generated, 9 s of it trained: 0.5 s of generation bought nothing.
    assert out["generator_untrained_work"] == pytest.approx(0.5)
    assert out["generator_weights"] == 0.2 and out["generator_gate"] == 0.0


def test_figures_ideal_overlap_and_busy_verdict():
    # Async 90 tok/s with gen 100 and train 150: serial 1/(1/100 + 1/150) = 60 tok/s;
    # ideal overlap 100 / 60 = 1.667; sync 54 -> async_over_sync 90/54 = 1.667 -> of ideal 1.0.
    a = _run(90.0, 100.0, 150.0, max_staleness=4, speed_probe=1.0)
    s = _run(54.0, 100.0, 150.0, max_staleness=0, speed_probe=1.0)
    out = figures([(a, s)])
    assert out["pipeline_efficiency_async"] == 0.9
    assert out["ideal_overlap_ratio"] == pytest.approx(1.667, abs=1e-3)
    assert out["async_over_sync_of_ideal"] == pytest.approx(1.0, abs=1e-3)
    assert out["pipeline_efficiency_sync"] == 0.9  # 54 / 60
    assert out["machine_busy"] is False and out["calibration_drift"] == 0.0
    # Same rates in both runs: overlapping cost neither side anything.
    assert out["overlap_slowdown_training"] == out["overlap_slowdown_generation"] == 0.0
    # The learner 20 % faster when it trains alone (η = 0): 1 - 150 / 187.5 = 0.2.
    alone = _run(54.0, 100.0, 187.5, max_staleness=0, speed_probe=1.0)
    assert figures([(a, alone)])["overlap_slowdown_training"] == 0.2
    # The speed probe took 1.25 s before one run: the machine ran 20 % slower there.
    slow = _run(54.0, 100.0, 150.0, max_staleness=0, speed_probe=1.25)
    out = figures([(a, slow)])
    assert out["calibration_drift"] == 0.2 and out["machine_busy"] is True


def test_of_ideal_splits_into_the_pipeline_and_the_machine():
    # Async: trained 80, gen 100, train 120 -> efficiency 80/100 = 0.8, serial 1/(1/100 +
    # 1/120) = 54.545. Sync: trained 60, gen 100, train 150 -> serial 60, efficiency 1.0.
    # Efficiency factor 0.8 / 1.0 = 0.8; serial factor 54.545 / 60 = 0.909 (training ran 20 %
    # slower beside generation). async_over_sync 80/60 = 1.333; ideal 100/54.545 = 1.833;
    # of ideal 1.333/1.833 = 0.727 = 0.8 * 0.909.
    a = _run(80.0, 100.0, 120.0, max_staleness=4, speed_probe=1.0)
    s = _run(60.0, 100.0, 150.0, max_staleness=0, speed_probe=1.0)
    out = figures([(a, s)])
    assert out["efficiency_async_over_sync"] == 0.8
    assert out["serial_rate_async_over_sync"] == pytest.approx(0.909, abs=1e-3)
    assert out["async_over_sync_of_ideal"] == pytest.approx(0.727, abs=1e-3)


def test_losses_count_the_learner_cpu_beside_training():
    # Hub and reward threads 1.2 s, reward workers 0.3 s: 1.5 s beside the training thread.
    cpu = {"training_thread": 6.0, "other_threads": 1.2, "child_processes": 0.3}
    out = losses(_run(90.0, 100.0, 200.0, learner_cpu_seconds=cpu))
    assert out["learner_cpu_beside_training"] == 1.5
    # Summaries from before the split have no such line.
    assert "learner_cpu_beside_training" not in losses(_run(90.0, 100.0, 200.0))


def test_figures_are_medians_over_pairs():
    # Three pairs, async efficiency 0.9, 0.8, 0.95 (gen 100 < train 150; trained 90, 80, 95)
    # against sync 54 each: medians 0.9 and 90/54 = 1.667; the losses come from the 0.9 run.
    runs = [_run(t, 100.0, 150.0, max_staleness=4, speed_probe=1.0) for t in (90.0, 80.0, 95.0)]
    sync = _run(54.0, 100.0, 150.0, max_staleness=0, speed_probe=1.0)
    out = figures([(r, sync) for r in runs])
    assert out["pipeline_efficiency_async"] == 0.9
    assert out["async_over_sync"] == pytest.approx(1.667, abs=1e-3)
    assert out["async_trained_tokens_per_second"] == 90.0
    assert [p["pipeline_efficiency_async"] for p in out["pipeline_pairs"]] == [0.9, 0.8, 0.95]
    assert len(out["pipeline_runs"]) == 6


def test_generator_phases_are_clipped_to_the_window():
    # Running totals at t = 0, 10, 20: generate 0 -> 8 -> 18, weights 0 -> 1 -> 1.
    timeline = [
        [0.0, {"generate": 0.0, "weights": 0.0}],
        [10.0, {"generate": 8.0, "weights": 1.0}],
        [20.0, {"generate": 18.0, "weights": 1.0}],
    ]
    # Window 5..15: generate 4 -> 13 (linear: 9 s), weights 0.5 -> 1 (0.5 s); other 10 - 9.5.
    out = phases_within(timeline, 5.0, 15.0)
    assert out["generate"] == 9.0 and out["weights"] == 0.5 and out["other"] == 0.5
    # A window past the timeline's end is cut to it: 15..20 -> generate 5, weights 0.
    out = phases_within(timeline, 15.0, 30.0)
    assert out["generate"] == 5.0 and out["weights"] == 0.0 and out["other"] == 0.0


def test_learning_curve_takes_evaluation_time_out(tmp_path):
    lines = [
        {"step": 0, "time": 100.0, "eval_accuracy": 0.3},
        {"step": 1, "time": 101.0},
        {"step": 2, "time": 104.0, "eval_accuracy": 0.5, "eval_seconds": 1.5},
        {"step": 4, "time": 108.0, "eval_accuracy": 0.8, "eval_seconds": 1.5},
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines))
    c = curve(path, samples_per_step=64)
    # Step 2: 4 s after the start, 1.5 s of it evaluating -> 2.5; step 4: 8 - 3 = 5.
    assert [p["seconds"] for p in c] == [0.0, 2.5, 5.0]
    assert [p["samples"] for p in c] == [0, 128, 256]
    # 0.7 lies 2/3 of the way from 0.5 (2.5 s) to 0.8 (5 s): 2.5 + 2/3 x 2.5 = 4.167.
    assert time_to(c, 0.7) == 4.167 and time_to(c, 0.9) is None
    assert time_to(c, 0.5) == 2.5 and time_to(c, 0.2) == 0.0
    # The final evaluation, written after checkpoint and export: the loop's own 9 s, less the
    # 3 s of evaluations in it.
    lines.append({"step": 5, "time": 130.0, "eval_accuracy": 0.9})
    path.write_text("\n".join(json.dumps(x) for x in lines))
    assert curve(path, 64, rl_seconds=9.0)[-1]["seconds"] == 6.0


def test_deferred_evaluations_keep_the_seconds_they_were_taken_at(tmp_path):
    # eval.deferred: the step records carry no evaluation; the copies' evaluations are
    # recorded after the run, out of step order, each with the loop's seconds at its copy.
    lines = [
        {"step": 0, "time": 100.0, "eval_accuracy": 0.3},
        {"step": 1, "time": 101.0},
        {"step": 2, "time": 102.0},
        {"step": 2, "time": 150.0, "eval_accuracy": 0.6, "rl_elapsed_seconds": 2.0},
        {"step": 1, "time": 151.0, "eval_accuracy": 0.4, "rl_elapsed_seconds": 1.0},
        {"step": 2, "time": 160.0, "eval_accuracy": 0.7},
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines))
    c = curve(path, samples_per_step=64, rl_seconds=2.5)
    # Sorted by step; the final evaluation (no seconds of its own) at the loop's 2.5 s.
    assert [(p["step"], p["seconds"], p["accuracy"]) for p in c] == [
        (0, 0.0, 0.3),
        (1, 1.0, 0.4),
        (2, 2.0, 0.6),
        (2, 2.5, 0.7),
    ]
    # The first generator joined 0.5 s into the loop: every later point moves 0.5 s earlier.
    c = curve(path, samples_per_step=64, rl_seconds=2.5, fleet_wait=0.5)
    assert [p["seconds"] for p in c] == [0.0, 0.5, 1.5, 2.0]


def test_learning_figures_relative_to_eta_zero():
    def pts(*acc_at):
        return [{"seconds": t, "accuracy": a, "samples": 0, "step": 0} for t, a in acc_at]

    runs = {
        "ppo": {
            0: [pts((0, 0.3), (10, 0.72), (20, 0.8)), pts((0, 0.3), (12, 0.75), (20, 0.8))],
            4: [pts((0, 0.3), (5, 0.7), (10, 0.76)), pts((0, 0.3), (7, 0.71), (10, 0.84))],
        }
    }
    f = summarise(runs, target=0.7)["ppo"]
    # Linear between the points around 0.7: η = 0 at 0.4/0.42 x 10 = 9.524 and 0.4/0.45 x 12
    # = 10.667 s (mean 10.10); η = 4 at 5 (exactly 0.7) and 0.4/0.41 x 7 = 6.829 s (mean
    # 5.91): 10.10 / 5.91 = 1.709.
    assert f["eta=0"]["time_to_target"] == 10.1 and f["eta=4"]["time_to_target"] == 5.91
    assert f["eta=4"]["time_to_target_speedup"] == pytest.approx(1.709, abs=1e-3)
    # Final accuracies: 0.8 both for η = 0; (0.76 + 0.84)/2 = 0.8 for η = 4: ratio 1.
    assert f["eta=4"]["final_accuracy_ratio"] == 1.0 and f["eta=0"]["final_accuracy"] == 0.8


def test_learning_overlap_bound_from_eta_zero_phases():
    def pts(*acc_at):
        return [{"seconds": t, "accuracy": a, "samples": 0, "step": 0} for t, a in acc_at]

    runs = {"ppo": {0: [pts((0, 0.3), (20, 0.8))] * 2, 4: [pts((0, 0.3), (10, 0.8))] * 2}}
    loops = {
        "ppo": {
            0: [
                {"rl": 20.0, "wait": 8.0, "first_wait": 1.0, "fleet_wait": 0.5},
                {"rl": 10.0, "wait": 6.0, "first_wait": 1.0, "fleet_wait": 0.0},
            ]
        }
    }
    f = summarise(runs, target=0.7, loops=loops)["ppo"]
    # Run 1, the fleet's 0.5 s taken out: RL 19.5, wait 7.5, first wait 0.5; the learner's own
    # work 19.5 - 7.5 = 12 plus the first wait: 12.5, bound 19.5 / 12.5 = 1.56. Run 2: own work
    # 10 - 6 = 4 plus 1: 5, bound 10 / 5 = 2.0. Mean: 1.78, the same on every row.
    assert f["eta=4"]["overlap_bound_speedup"] == f["eta=0"]["overlap_bound_speedup"] == 1.78
    # Whole-budget RL seconds: 20 at η = 0 over 10 at η = 4.
    assert f["eta=4"]["rl_seconds_speedup"] == 2.0 and f["eta=0"]["rl_seconds_speedup"] == 1.0
    # Without the loops' phases there is no bound.
    assert summarise(runs, target=0.7)["ppo"]["eta=4"]["overlap_bound_speedup"] is None

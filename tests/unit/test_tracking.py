"""Experiment tracking on rank 0: statistic names, the progress line, the trackers and the
Prometheus gauges (learner/tracking, learner/metrics.StatGauges)."""

from __future__ import annotations

import json
import logging
import math

import pytest
from prometheus_client import generate_latest

from asyncrl.learner.metrics import LearnerMetrics
from asyncrl.learner.tracking import Tracking, check_trackers, make_trackers
from asyncrl.learner.tracking.base import StatNames, stat_name
from asyncrl.learner.tracking.progress import (
    ProgressGate,
    eta_seconds,
    fmt_duration,
    format_progress,
)


def test_stat_names_are_metric_safe():
    assert stat_name("adv_mean") == "adv_mean"
    assert stat_name("reward/accuracy-reward") == "reward_accuracy_reward"
    assert stat_name("Pass@4") == "pass_4"
    assert stat_name("4gram") == "s_4gram"  # a metric name cannot start with a digit
    assert stat_name("tokens_total") == "tokens_total_value"  # counter suffix is reserved
    assert stat_name("///") is None
    assert len(stat_name("x" * 500)) == 64


def test_stat_names_keep_numbers_and_bound_the_name_set():
    names = StatNames(limit=2)
    clean, dropped = names.clean({"a": 1, "b": True, "text": "no", "c": 2.0})
    assert clean == {"a": 1.0, "b": 1.0} and dropped == ["c"]
    # Known names go on; a dropped one is reported once only.
    clean, dropped = names.clean({"c": 3.0, "a": float("nan")})
    assert dropped == [] and list(clean) == ["a"] and math.isnan(clean["a"])


def test_progress_line_format():
    line = format_progress(12, 120, 1534.4, 0.625, 0.5, 1, 185.0, {"loss": "0.0123"})
    assert line == (
        "step 12/120 | 1534 tok/s | reward 0.625 | staleness 0.50 (max 1) | eta 3m05s | loss 0.0123"
    )
    assert format_progress(1, 5, 0.0, None, None, None, None) == (
        "step 1/5 | 0 tok/s | reward n/a | staleness n/a | eta ?"
    )


def test_durations_and_eta():
    assert [fmt_duration(s) for s in (0, 59.4, 60, 3599, 7620)] == [
        "0s",
        "59s",
        "1m00s",
        "59m59s",
        "2h07m",
    ]
    assert fmt_duration(None) == fmt_duration(float("inf")) == "?"
    # 12 steps in 24 s from version 0: 2 s a step, 108 to go.
    assert eta_seconds(12, 120, 0, 24.0) == 216.0
    assert eta_seconds(12, 120, 0, 24.0, time_left=100.0) == 100.0  # train.max_seconds
    # Resumed at 10: only the 2 steps of this lifetime count.
    assert eta_seconds(12, 20, 10, 4.0) == 16.0
    assert eta_seconds(10, 20, 10, 4.0) is None


def test_progress_gate_every_n_steps_or_every_few_seconds():
    gate = ProgressGate(total=100, log_every=5, seconds=10.0)
    # Fast steps (1 s): the first, then every 5th step.
    fast = [s for s in range(1, 12) if gate.due(s, float(s))]
    assert fast == [1, 6, 11]
    # Slow steps (4 s from t=11): a line as soon as 10 s have passed since the last one,
    # before 5 steps have.
    slow = [s for s in range(12, 18) if gate.due(s, 11.0 + 4 * (s - 11))]
    assert slow == [14, 17]
    assert gate.due(100, 80.0)  # the last step always


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


STEP = {
    "loss": 0.25,
    "clip_frac_low": 0.01,
    "clip_frac_high": 0.02,
    "clip_frac_dual": 0.0,
    "is_weight_max": 1.5,
    "is_weight_mean": 1.0,
    "kl": 0.001,
    "entropy": 0.7,
    "grad_norm": 0.3,
    "lr": 1e-5,
    "reward_mean": 0.5,
    "response_tokens": 200.0,
    "adv_mean": 0.0,
    "adv_std": 0.9,
    "ttrl_label_accuracy": 0.75,
    "ttrl_majority_frac": 0.625,
    "staleness_mean": 0.5,
    "staleness_max": 1,
}


def test_tracking_reaches_jsonl_prometheus_and_the_log(tmp_path, caplog):
    metrics = LearnerMetrics()
    trackers = make_trackers(["jsonl"], str(tmp_path), "p", {})
    clock = Clock()
    tracking = Tracking(trackers, metrics, total_steps=10, log_every=5, clock=clock)
    tracking.start(0, {"eval_accuracy": 0.4})
    clock.t += 2.0
    with caplog.at_level(logging.INFO, logger="asyncrl.learner.tracking"):
        tracking.step(1, dict(STEP))
    tracking.record(1, {"eval_accuracy": 0.5})
    tracking.close()

    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 1, 1]
    assert lines[0]["eval_accuracy"] == 0.4 and lines[2]["eval_accuracy"] == 0.5
    step = lines[1]
    for key in STEP:
        assert step[key] == pytest.approx(STEP[key]), key
    # Derived: 200 tokens in the 2 s since the start; clip fractions summed.
    assert step["tokens_per_second"] == pytest.approx(100.0)
    assert step["step_seconds"] == pytest.approx(2.0)
    assert step["clip_fraction"] == pytest.approx(0.03)

    text = generate_latest(metrics.registry).decode()
    # Documented series keep their names; the rest are asyncrl_<stat>.
    assert "asyncrl_importance_weight_max 1.5" in text
    assert "asyncrl_clip_fraction 0.03" in text
    assert "asyncrl_ttrl_label_accuracy 0.75" in text
    assert "asyncrl_adv_std 0.9" in text
    assert "asyncrl_eval_accuracy 0.5" in text
    assert "asyncrl_learner_steps_total 1.0" in text
    assert "asyncrl_learner_tokens_total 200.0" in text

    (msg,) = [r.getMessage() for r in caplog.records]
    # 9 steps to go at 2 s a step.
    assert msg.startswith(
        "step 1/10 | 100 tok/s | reward 0.500 | staleness 0.50 (max 1) | eta 18s | loss 0.2500"
    ), msg


def test_a_statistic_named_like_another_series_is_counted_not_fatal(tmp_path):
    metrics = LearnerMetrics()
    tracking = Tracking([], metrics, total_steps=3, log_every=1, clock=Clock())
    # asyncrl_learner_steps is a counter of this registry already.
    tracking.record(1, {"learner_steps": 5.0, "adv_mean": 0.1})
    text = generate_latest(metrics.registry).decode()
    assert "asyncrl_stats_dropped_total 1.0" in text
    assert "asyncrl_adv_mean 0.1" in text


def test_tensorboard_event_files_hold_every_statistic(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (tb,) = make_trackers(["tensorboard"], str(tmp_path), "p", {})
    tb.log(3, {"loss": 0.25, "adv_mean": -0.5})
    tb.log(4, {"loss": 0.125})
    tb.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"loss", "adv_mean"}
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(3, 0.25), (4, 0.125)]


def test_wandb_offline_run_is_written_locally(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    (run,) = make_trackers(["wandb"], str(tmp_path), "asyncrl-test", {"train": {"steps": 2}})
    run.log(1, {"loss": 0.5})
    run.close()
    assert list((tmp_path / "wandb").glob("**/offline-run-*"))


def test_missing_tracker_library_is_one_line(monkeypatch):
    import importlib.util

    from asyncrl.learner.tracking import TrackerUnavailable

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(TrackerUnavailable) as exc:
        check_trackers(["jsonl", "wandb"])
    assert "\n" not in str(exc.value) and "asyncrl[wandb]" in str(exc.value)


def test_a_resumed_run_rolls_back_the_steps_it_trains_again(tmp_path):
    # The killed run logged steps 0-5 (two lines at step 2: its step and an evaluation) and
    # died writing step 6: a torn line. Resumed from the checkpoint at version 3, steps 4-6
    # are trained again, so their old lines (and the torn one) leave metrics.jsonl.
    path = tmp_path / "metrics.jsonl"
    old = [{"step": s, "loss": float(s)} for s in (0, 1, 2, 2, 3, 4, 5)]
    path.write_text("".join(json.dumps(x) + "\n" for x in old) + '{"step": 6, "lo')
    (tracker,) = make_trackers(["jsonl"], str(tmp_path), "p", {}, resumed_from=3)
    tracker.log(4, {"loss": 40.0})
    tracker.close()

    lines = [json.loads(x) for x in path.read_text().splitlines()]
    # 0, 1, 2, 2, 3 kept; then the resumed run's own step 4.
    assert [x["step"] for x in lines] == [0, 1, 2, 2, 3, 4] and lines[-1]["loss"] == 40.0
    moved = (tmp_path / "metrics.rolled_back.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in moved[:2]] == [4, 5] and moved[2] == '{"step": 6, "lo'
    # A fresh run (no resume) appends and moves nothing.
    (tracker,) = make_trackers(["jsonl"], str(tmp_path), "p", {})
    tracker.close()
    assert len(path.read_text().splitlines()) == 6

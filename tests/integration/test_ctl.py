"""`asyncrl ctl` on a running `asyncrl local`: η moved 4 -> 0 -> 4 while it trains. The
consumed staleness follows the live limit (no step whose batch was taken after a change
trains anything staler than the limit then in force), every change is audited in metrics and
history, and a learner resumed from the run's checkpoint keeps the live values."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from asyncrl.launch.ctl import request
from asyncrl.protocol.sockets import free_ports
from tests.integration.conftest import REPO, UNTIL_STOPPED, next_event, scrape, start_cli, stop_run

PHASE = 3  # steps trained under each limit before the next change (at least)


def _wait_version(control: str, at_least: int, proc, timeout: float = 240) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "asyncrl local exited early"
        v = request(control, "get").learner_version
        if v >= at_least:
            return v
        time.sleep(0.1)
    raise AssertionError(f"learner did not reach version {at_least}")


def _stop(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_live_eta_4_0_4_on_asyncrl_local_then_resume(small_overrides, tmp_path):
    # Eight optimizer passes per batch make the learner the slower side, so that under η=4
    # generators run ahead and trained groups are stale by more than 0.
    common = [*small_overrides, "buffer.max_staleness=4", "train.ppo_epochs=8"]
    run_dir = Path(next(a.split("=", 1)[1] for a in common if a.startswith("learner.output")))
    # Run until stopped: how many steps pass while `asyncrl ctl` starts is the machine's
    # business, and a run that ends mid-phase would leave a phase short.
    log = tmp_path / "local.log"
    local = start_cli(["local", *common, UNTIL_STOPPED, "local.generators=2"], log)
    try:
        started = next_event(local, "started")
        control, metrics = started["endpoints"]["control"], started["metrics"]["learner"]
        _wait_version(control, PHASE, local)
        # The first change through the command itself, as an operator types it.
        out = subprocess.run(
            [sys.executable, "-m", "asyncrl.launch.cli", "ctl", "--learner", control, "--json"]
            + ["set", "buffer.max_staleness=0"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        first = json.loads(out.stdout)
        assert first["applied"] == ["buffer.max_staleness"]
        assert first["values"]["buffer.max_staleness"] == 0
        v1 = first["learner_version"]
        seen = scrape(metrics)
        assert seen["asyncrl_max_staleness"] == 0
        assert seen['asyncrl_config_changes_total{field="buffer.max_staleness"}'] == 1

        _wait_version(control, v1 + PHASE, local)
        second = request(control, "set", ["buffer.max_staleness=4", "sampling.top_p=0.95"])
        assert second.refused == [] and second.applied == ["buffer.max_staleness", "sampling.top_p"]
        v2 = second.learner_version
        seen = scrape(metrics)
        assert seen["asyncrl_max_staleness"] == 4
        assert seen["asyncrl_sampling_top_p"] == 0.95
        assert seen['asyncrl_config_changes_total{field="buffer.max_staleness"}'] == 2
        # Not tunable live: refused with its reason, nothing applied, counted.
        refused = request(control, "set", ["train.lr=1.0"])
        assert refused.applied == [] and "read only at start" in refused.refused[0]
        history = [json.loads(h) for h in request(control, "history").history]
        assert [(h["field"], h["old"], h["new"]) for h in history] == [
            ("buffer.max_staleness", 4, 0),
            ("buffer.max_staleness", 0, 4),
            ("sampling.top_p", 1.0, 0.95),
        ]
        _wait_version(control, v2 + PHASE, local)
        summary = stop_run(local, log)
    finally:
        _stop(local)
    final = summary["policy_version"]
    assert final >= v2 + PHASE

    # Per step (metrics.jsonl): a batch for version k+1 is taken at version k. A change
    # answered at version v applies to every batch taken from version v+1 on (the batch of
    # v+1 may have been taken just before it).
    records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    steps = {r["step"]: r["staleness_max"] for r in records if "staleness_max" in r}
    assert sorted(steps) == list(range(1, final + 1))
    under_zero = [s for k, s in steps.items() if v1 + 2 <= k <= v2]
    under_four = [s for k, s in steps.items() if k <= v1 or k > v2]
    assert under_zero and max(under_zero) == 0, (v1, v2, steps)
    assert 1 <= max(under_four) <= 4, (v1, v2, steps)

    # A learner resumed from the final checkpoint with the same configuration keeps the live
    # values and their history.
    ports = free_ports(4)
    learner = start_cli(
        [
            "learner",
            *common,
            f"train.steps={final + 10}",
            f"learner.control_port={ports[0]}",
            f"learner.rollouts_port={ports[1]}",
            f"learner.weights_port={ports[2]}",
            f"learner.metrics_port={ports[3]}",
            "--resume",
        ],
        tmp_path / "learner.log",
    )
    try:
        ready = next_event(learner, "learner_ready")
        assert ready["resumed"] and ready["policy_version"] == final
        got = request(ready["endpoints"]["control"], "history")
        values = dict(v.split("=", 1) for v in got.values)
        assert json.loads(values["sampling.top_p"]) == 0.95
        assert json.loads(values["buffer.max_staleness"]) == 4
        assert len(got.history) == 3
        assert scrape(f"http://127.0.0.1:{ports[3]}/metrics")["asyncrl_sampling_top_p"] == 0.95
    finally:
        _stop(learner)

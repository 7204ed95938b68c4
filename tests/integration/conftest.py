"""Shared fixtures for integration tests: a small cached tiny task and a runner for the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# A smaller task than the default so the cold build takes seconds; RL quality is not what
# integration tests measure.
SMALL_TINY = [
    "tiny.n_train=256",
    "tiny.n_eval=32",
    "tiny.n_sft=256",
    "tiny.sft_steps=40",
]


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> str:
    cache = tmp_path_factory.mktemp("asyncrl-cache")
    from asyncrl.launch.config import load_config
    from asyncrl.launch.tiny import setup_tiny_assets

    cfg = load_config(None, SMALL_TINY + [f"tiny.cache_dir={cache}"])
    setup_tiny_assets(cfg.tiny)
    return str(cache)


@pytest.fixture
def small_overrides(tiny_cache, tmp_path) -> list[str]:
    return SMALL_TINY + [
        f"tiny.cache_dir={tiny_cache}",
        f"learner.output_dir={tmp_path / 'run'}",
        "data.eval_size=32",
        "eval.every=0",
        "train.log_every=1",
        "train.groups_per_step=4",
        "sampling.group_size=4",
        # Nothing scrapes a test run after it finished: exit at once (test_finish lingers).
        "learner.metrics_linger_seconds=0",
        "generator.metrics_linger_seconds=0",
    ]


def run_cli(args: list[str], timeout: float = 600, env: dict | None = None):
    """Run `python -m asyncrl.launch.cli ARGS`; returns (returncode, stdout JSON events, stderr).
    Every stdout line is an event (see `next_event`)."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.run(
        [sys.executable, "-m", "asyncrl.launch.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, events, proc.stderr


def start_cli(args: list[str], log: Path) -> subprocess.Popen:
    """Start `python -m asyncrl.launch.cli ARGS` in the background. stderr (the logs) goes to `log`:
    an unread pipe fills up and blocks the process."""
    return subprocess.Popen(
        [sys.executable, "-m", "asyncrl.launch.cli", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


def next_event(proc: subprocess.Popen, kind: str) -> dict:
    """The next JSON event on the process's stdout, which carries nothing else: what
    libraries print is sent to stderr (`launch.cli._claim_stdout`, `launch.local`)."""
    line = proc.stdout.readline()
    assert line, f"process exited before its {kind!r} event (see its log)"
    event = json.loads(line)
    assert event["event"] == kind, event
    return event


def scrape(url: str, timeout: float = 5.0) -> dict[str, float]:
    """A /metrics page as {series with labels: value}."""
    import urllib.request

    text = urllib.request.urlopen(url, timeout=timeout).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


# For a run that a test probes while it trains: far more steps than the test needs, ended by
# `stop_run` once the probing is done. A short run may finish mid-probe: its hub then answers
# nothing, or `finished`, and its /metrics is gone.
UNTIL_STOPPED = "train.steps=1000000"


def wait_version(
    metrics_url: str, at_least: int, proc: subprocess.Popen, timeout: float = 300
) -> int:
    """Poll the learner's `asyncrl_policy_version` until it reaches `at_least`; returns it."""
    import time

    deadline = time.time() + timeout
    while True:
        assert proc.poll() is None, "the run ended before the test stopped it"
        version = int(scrape(metrics_url).get("asyncrl_policy_version", -1))
        if version >= at_least:
            return version
        assert time.time() < deadline, f"the learner did not reach version {at_least}"
        time.sleep(0.2)


def stop_run(proc: subprocess.Popen, log: Path, timeout: float = 300) -> dict:
    """End an `asyncrl local` run started with UNTIL_STOPPED: SIGTERM (the learner stops after
    its current step and saves, the generators hand back their leases), exit 0, and return
    the summary it printed last."""
    import signal

    assert proc.poll() is None, "the run ended before the test stopped it"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, log.read_text()[-4000:]
    summary = [json.loads(x) for x in out.splitlines() if x.startswith("{")][-1]
    assert summary["event"] == "summary", summary
    return summary


def stranger_rollout(lease_id: str) -> list[bytes]:
    """The frames of a well-formed rollout group from a generator the learner never leased
    to (`intruder`)."""
    import numpy as np

    from asyncrl.protocol.codec import encode
    from asyncrl.protocol.messages import RolloutGroup

    group = RolloutGroup(
        lease_id=lease_id,
        generator_id="intruder",
        tokens=np.array([1, 2], np.int32),
        logprobs=np.array([-0.1, -0.2], np.float32),
        versions=np.array([0, 0], np.int32),
        lengths=np.array([2], np.int32),
        finish_reasons=["stop"],
        generate_seconds=0.1,
    )
    return [bytes(f) for f in encode(group)]

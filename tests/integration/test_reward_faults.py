"""A reward that hangs on some prompts and raises on others, plugged into a live `asyncrl local`.

Rewards run in the learner's reward pool: a hung call is killed at `reward.timeout_seconds`
and its group dropped as `reward_timeout`; a raising one is dropped as `reward_error` and
counted in `reward_errors`. Meanwhile the socket loop keeps leasing, answering heartbeats and
serving weights: the policy version and the generator's loaded version keep advancing after the
first timeout, the generator stays connected, and the run finishes.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error

from tests.integration.conftest import next_event, run_cli, scrape, start_cli

STEPS = 10


def test_hanging_and_raising_rewards_are_dropped_and_training_goes_on(small_overrides, tmp_path):
    log = tmp_path / "local.log"
    proc = start_cli(
        [
            "local",
            *small_overrides,
            f"train.steps={STEPS}",
            "local.generators=1",
            "buffer.max_staleness=2",
            # The small tiny model scores 0 on most prompts: keep all-equal groups, so steps
            # are not starved by the filter (what is measured here is the faults' handling).
            "buffer.filter_zero_variance=false",
            "reward.name=plugin",
            "reward.plugin=tests.integration.flaky_reward:hang_or_raise",
            "reward.workers=2",
            "reward.timeout_seconds=2",
        ],
        log,
    )
    seen: list[dict[str, float]] = []  # learner and generator metrics, one entry per scrape
    try:
        started = next_event(proc, "started")
        learner_url = started["metrics"]["learner"]
        generator_url = started["metrics"]["generator-0"]
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            try:
                seen.append({**scrape(learner_url), **scrape(generator_url)})
            except (urllib.error.URLError, ConnectionError):
                break  # the run ended between two scrapes
            time.sleep(0.3)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = log.read_text()
    assert proc.returncode == 0, stderr[-4000:]
    summary = [json.loads(x) for x in out.splitlines() if x.startswith("{")][-1]
    assert summary["event"] == "summary" and summary["policy_version"] == STEPS

    timeouts = 'asyncrl_rollouts_dropped_total{reason="reward_timeout"}'
    first = next((i for i, m in enumerate(seen) if m[timeouts] >= 1), None)
    assert first is not None, "no group was ever dropped as reward_timeout"
    last = seen[-1]
    assert last['asyncrl_rollouts_dropped_total{reason="reward_error"}'] >= 1
    assert last["asyncrl_reward_errors_total"] >= 1
    # After the first timeout: more steps, more leases, newer weights loaded by the generator,
    # and the generator never dropped for silence (its heartbeats were answered).
    at = seen[first]
    assert last["asyncrl_policy_version"] > at["asyncrl_policy_version"]
    assert last["asyncrl_leases_issued_total"] > at["asyncrl_leases_issued_total"]
    assert last["asyncrl_generator_policy_version"] > at["asyncrl_generator_policy_version"]
    assert all(m["asyncrl_generators_connected"] == 1 for m in seen[first:])
    assert "went silent" not in stderr
    assert "reward failed" in stderr and "killed" in stderr


def test_a_reward_that_never_scores_ends_the_run_with_one_line(small_overrides):
    # Every group gets no reward from any function: after 3 in a row the learner stops with
    # exit code 4 and one line naming the setting and the last cause, and `asyncrl local`
    # passes the code on, instead of dropping groups forever and exiting 0.
    code, _, stderr = run_cli(
        [
            "local",
            *small_overrides,
            "train.steps=5",
            "local.generators=1",
            "reward.functions=[tests.integration.flaky_reward:never]",
            "reward.max_consecutive_failures=3",
            "reward.workers=1",
        ],
        timeout=300,
    )
    assert code == 4, stderr[-4000:]
    lines = [x for x in stderr.splitlines() if x.startswith("asyncrl learner: ")]
    assert len(lines) == 1, stderr[-4000:]
    # At least 3: more fail while the learner is busy before its next wait (first evaluation).
    failed = re.search(r"the reward failed on (\d+) groups in a row \(reward.max_consec", lines[0])
    assert failed and int(failed.group(1)) >= 3, lines[0]
    assert "no reward function (never) scored any" in lines[0]

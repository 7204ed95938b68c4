"""Rollout validation at intake: each check on a hand-built group, with the precise reason the
group is dropped for; and every reason of every labelled learner counter exists at 0."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import generate_latest

from asyncrl.learner.metrics import (
    DISCONNECT_REASONS,
    DROP_REASONS,
    MALFORMED_REASONS,
    LearnerMetrics,
)
from asyncrl.protocol.codec import DECODE_REASONS, ProtocolError
from asyncrl.protocol.messages import RolloutGroup
from asyncrl.protocol.validate import ROLLOUT_REASONS, RolloutLimits, validate_rollout

LIMITS = RolloutLimits(vocab_size=10, max_new_tokens=4)


def _group(**kw) -> RolloutGroup:
    # Two samples of 3 and 2 tokens (5 in all), sampled by versions 2..3.
    base = dict(
        lease_id=RolloutGroup.SCHEMA.scalars["lease_id"][0](7),
        generator_id="g",
        tokens=np.array([1, 2, 3, 4, 5], np.int32),
        logprobs=np.array([-0.1, -0.2, -3.0, 0.0, -9999.0], np.float32),
        versions=np.array([2, 2, 3, 3, 3], np.int32),
        lengths=np.array([3, 2], np.int32),
        finish_reasons=["stop", "length"],
        generate_seconds=0.1,
    )
    base.update(kw)
    return RolloutGroup(**base)


def _check(group, learner_version=3, issued_version=2, limits=LIMITS):
    validate_rollout(group, limits, 2, learner_version, issued_version)


def test_a_valid_group_passes_at_the_bounds():
    # Versions 2..3 within [issued 2, learner 3]; logprob -9999 above the floor -1e4; 0.0 and
    # up to +1e-3 are rounding.
    _check(_group())
    _check(_group(logprobs=np.array([-1e4, 1e-3, -1, -1, -1], np.float32)))


@pytest.mark.parametrize(
    "change,kw,reason",
    [
        (
            "three samples for a lease of 2",
            dict(lengths=np.array([3, 1, 1], np.int32)),
            "group_size",
        ),
        ("one finish reason", dict(finish_reasons=["stop"]), "bad_finish_reasons"),
        ("unknown finish reason", dict(finish_reasons=["stop", "eos"]), "bad_finish_reasons"),
        ("a negative length", dict(lengths=np.array([6, -1], np.int32)), "bad_lengths"),
        ("5 tokens > max 4", dict(lengths=np.array([5, 0], np.int32)), "too_long"),
        ("lengths sum 4 != 5 tokens", dict(lengths=np.array([2, 2], np.int32)), "bad_lengths"),
        ("token id 10 = vocab", dict(tokens=np.array([1, 2, 3, 4, 10], np.int32)), "bad_tokens"),
        ("token id -1", dict(tokens=np.array([-1, 2, 3, 4, 5], np.int32)), "bad_tokens"),
        ("NaN logprob", dict(logprobs=np.array([np.nan, 0, 0, 0, 0], np.float32)), "bad_logprobs"),
        (
            "logprob 0.5 > 1e-3",
            dict(logprobs=np.array([0.5, 0, 0, 0, 0], np.float32)),
            "bad_logprobs",
        ),
        (
            "logprob -1e30 < -1e4",
            dict(logprobs=np.array([-1e30, 0, 0, 0, 0], np.float32)),
            "bad_logprobs",
        ),
        (
            "version 4 > learner 3",
            dict(versions=np.array([2, 2, 3, 3, 4], np.int32)),
            "bad_versions",
        ),
        (
            "version 1 < issued 2",
            dict(versions=np.array([1, 2, 3, 3, 3], np.int32)),
            "bad_versions",
        ),
        ("baseline of 5 > 4", dict(baseline_tokens=np.ones(5, np.int32)), "too_long"),
        ("baseline id 10", dict(baseline_tokens=np.array([10], np.int32)), "bad_tokens"),
        ("2-d baseline", dict(baseline_tokens=np.ones((1, 1), np.int32)), "bad_lengths"),
    ],
)
def test_each_check_gives_its_precise_reason(change, kw, reason):
    with pytest.raises(ProtocolError) as exc:
        _check(_group(**kw))
    assert exc.value.reason == reason, change
    assert reason in ROLLOUT_REASONS


def test_the_logprob_floor_is_configurable():
    # -9999 passes the default floor -1e4 but not a floor of -100.
    with pytest.raises(ProtocolError, match="bad_logprobs"):
        _check(_group(), limits=RolloutLimits(10, 4, min_logprob=-100.0))


def test_versions_are_bounded_by_the_lease_not_only_by_the_learner():
    # Issued at 3: version 2 tokens cannot come from weights held since the lease was taken.
    with pytest.raises(ProtocolError, match="bad_versions"):
        _check(_group(), learner_version=5, issued_version=3)
    _check(_group(), learner_version=5, issued_version=0)


def test_every_reason_of_every_labelled_counter_is_exported_at_zero():
    text = generate_latest(LearnerMetrics().registry).decode()
    for name, reasons in (
        ("asyncrl_rollouts_dropped_total", DROP_REASONS),
        ("asyncrl_malformed_messages_total", MALFORMED_REASONS),
        ("asyncrl_peer_disconnects_total", DISCONNECT_REASONS),
        ("asyncrl_leases_denied_total", ("gate", "version")),
    ):
        for reason in reasons:
            assert f'{name}{{reason="{reason}"}} 0.0' in text, (name, reason)
    # Every reason the codec, the socket, validation or the guard can give has a series.
    assert set(DECODE_REASONS) | {"internal", "unexpected_type"} <= set(MALFORMED_REASONS)
    assert set(ROLLOUT_REASONS) <= set(DROP_REASONS)
    assert len(set(DROP_REASONS)) == len(DROP_REASONS)

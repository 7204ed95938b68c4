"""eval.deferred's memory check (learner/loop.py)."""

from __future__ import annotations

from asyncrl.learner.loop import deferred_copies_too_big


def test_deferred_copies_must_fit_in_half_the_available_memory():
    # 40 copies of 2 MB = 80 MB against 1 GB available: fits (80 MB <= 500 MB).
    assert deferred_copies_too_big(2_000_000, 40, 1_000_000_000) is None
    # 40 copies of 1 GB = 40 GB against 24 GB: refused, saying what it would hold.
    why = deferred_copies_too_big(1_000_000_000, 40, 24_000_000_000)
    assert why.startswith("eval.deferred would hold 40 copies of the policy (1.00 GB each, 40.0")
    # Exactly half fits; unknown memory (not Linux) is not checked.
    assert deferred_copies_too_big(100, 5, 1000) is None
    assert deferred_copies_too_big(10**12, 10, None) is None

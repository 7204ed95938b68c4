"""The math extractor is linear-time (issue 16, item 2): the pathological inputs that took the
old extractor 9-60 s finish in well under a second, work grows linearly with the input, and
the one-pass algorithms agree with the obvious quadratic ones on random text."""

from __future__ import annotations

import re
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from asyncrl.learner.rewards.math import extract_answer, extract_boxed, normalize


def best_of(fn, arg, runs: int = 3) -> float:
    # The fastest of a few runs: the least disturbed by other load on the machine.
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - t)
    return min(times)


UNCLOSED_BOX = "\\boxed{"
TEXT_SPACES = "\\text{" + " " * 2000 + "x"


def test_pathological_inputs_finish_fast():
    # The inputs: an unclosed \boxed{ repeated 8k times (old: 28 s), 1 MB of it
    # (old: over 60 s), 2,000 spaces after \text{ (old: 9 s).
    assert best_of(extract_answer, UNCLOSED_BOX * 8000, runs=1) < 1.0
    assert best_of(extract_answer, (UNCLOSED_BOX * 150_000)[: 1 << 20], runs=1) < 1.0
    assert best_of(normalize, TEXT_SPACES, runs=1) < 1.0
    assert best_of(normalize, TEXT_SPACES * 200, runs=1) < 1.0


def test_work_grows_linearly():
    # 4x the input: a linear scan takes ~4x as long, a quadratic one ~16x. A bound of 8 tells
    # them apart with room for timing noise.
    inputs = [
        (extract_answer, lambda n: UNCLOSED_BOX * n),
        (extract_answer, lambda n: "{" * n + "\\boxed{1}"),
        (extract_boxed, lambda n: ("\\boxed{" + "{" * 3) * n),
        (normalize, lambda n: "\\text{" + " " * (8 * n) + "x"),
        (normalize, lambda n: ("\\text{" + " " * 7) * n),
    ]
    for fn, make in inputs:
        small, large = best_of(fn, make(4000)), best_of(fn, make(16000))
        assert large < 8 * max(small, 1e-4), (fn.__name__, small, large)


def reference_boxed(text: str) -> str | None:
    # Quadratic but obviously right: from the last opener back, the first that closes.
    for m in reversed(list(re.finditer(r"\\(?:boxed|fbox)\s*\{", text))):
        depth = 0
        for i in range(m.end() - 1, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                inner = text[m.end() : i].strip()
                if inner:
                    return inner
                break
    return None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["\\boxed{", "\\fbox {", "{", "}", "1", " ", "x"]), max_size=30))
def test_one_pass_boxed_matches_reference(parts):
    text = "".join(parts)
    assert extract_boxed(text) == reference_boxed(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["\\text{", "{", "}", " ", "km", "\n"]), max_size=20))
def test_text_unwrapping_matches_the_old_regex(parts):
    s = "".join(parts)
    old = re.sub(r"\\text\{\s*([^{}]*?)\s*\}", r"\1", s)
    assert normalize(s) == re.sub(r"\s+", "", old).lower().rstrip(".")


def test_text_unwrapping_examples():
    assert normalize("5\\text{ km }") == "5km"
    assert normalize("\\text{a{b}}") == "\\text{a{b}}"  # braces inside: left as it was
    assert normalize("\\boxed{\\text{ yes }}") == "\\boxed{yes}"

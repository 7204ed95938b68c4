"""The math extractor is linear-time (issue 16, item 2): the pathological inputs that took the
old extractor 9-60 s finish in well under a second, the work done (brace tokens visited)
doubles exactly with the input, and the one-pass algorithms agree with the obvious quadratic
ones on random text."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncrl.learner.rewards import math as math_mod
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
    assert best_of(extract_answer, UNCLOSED_BOX * 8000) < 1.0
    assert best_of(extract_answer, (UNCLOSED_BOX * 150_000)[: 1 << 20]) < 1.0
    assert best_of(normalize, TEXT_SPACES) < 1.0
    assert best_of(normalize, TEXT_SPACES * 200) < 1.0


class CountingPattern:
    """Wraps a compiled pattern: counts finditer calls and the matches they yield."""

    def __init__(self, pattern):
        self.pattern, self.calls, self.matches = pattern, 0, 0

    def finditer(self, text):
        self.calls += 1
        for m in self.pattern.finditer(text):
            self.matches += 1
            yield m


def work(monkeypatch, name: str, fn, text: str) -> tuple[int, int]:
    """(scans started, tokens visited) by `fn(text)` through math's pattern `name`: the
    extractors' only loops run over these tokens, and finditer itself never rescans."""
    counting = CountingPattern(getattr(math_mod, name))
    monkeypatch.setattr(math_mod, name, counting)
    fn(text)
    monkeypatch.undo()
    return counting.calls, counting.matches


@pytest.mark.parametrize(
    "name, fn, unit",
    [
        ("_BOX_TOKENS", extract_answer, UNCLOSED_BOX),  # every opener unclosed
        ("_BOX_TOKENS", extract_boxed, "\\boxed{{{"),  # nested opens, none closed
        ("_BOX_TOKENS", extract_boxed, "\\boxed{1}}{"),  # closed, stray and open braces
        ("_TEXT_TOKENS", normalize, "\\text{       "),  # unclosed \text{ with spaces
        ("_TEXT_TOKENS", normalize, "\\text{ km }"),  # closed ones
    ],
)
def test_work_is_linear_n_vs_2n(monkeypatch, name, fn, unit):
    # One scan per call and one visit per brace token: twice the text, exactly twice the
    # work (the old extractors rescanned to the end from every opener: 4x).
    calls_n, visits_n = work(monkeypatch, name, fn, unit * 1000)
    calls_2n, visits_2n = work(monkeypatch, name, fn, unit * 2000)
    assert calls_n == calls_2n == 1
    assert visits_2n == 2 * visits_n
    assert visits_n == sum(unit.count(c) for c in "{}") * 1000


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

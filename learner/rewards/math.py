"""Math reward: extract a completion's final answer and check it against the row's answer.

Extraction takes the last `\\boxed{...}`, else the text after the last "answer is", else the
last number. Plain numbers are compared in-process; anything else goes to math-verify, run in
a small pool of spawned worker processes so that a pathological expression (sympy can take
minutes) only costs that completion its reward, never the learner's intake thread.
`learner.rewards.ttrl` reuses the extractor and the cheap comparison.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from fractions import Fraction

from asyncrl.learner.rewards import RewardInput, RewardResult
from asyncrl.learner.rewards.config import RewardConfig

logger = logging.getLogger(__name__)

# One pass over box openers and braces finds every box's closing brace (see extract_boxed).
_BOX_TOKENS = re.compile(r"\\(?:boxed|fbox)\s*\{|[{}]")
_TEXT_TOKENS = re.compile(r"\\text\{|[{}]")
_ANSWER_IS = re.compile(r"answer\s+is", re.IGNORECASE)
# A number not glued to a preceding word, digit or closing bracket (so "x-3" yields 3, not -3):
# thousands with commas, or plain digits; optional decimals; optional "/denominator".
_NUMBER = re.compile(
    r"(?:(?<![\w.)\]}])-)?(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+)?|\.\d+)"
)
_PLAIN_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+|(?=\.\d))(?:\.\d+)?(?:/\d+)?")
# \frac{1}{2} and the brace-less shorthand \frac12 (one digit each).
_LATEX_FRAC = re.compile(r"(-?)\\[dt]?frac(?:\{(-?\d+)\}|(\d))(?:\{(\d+)\}|(\d))")
# Wrappers and spacing that do not change a final answer's value.
_STRIP_TOKENS = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\displaystyle", "$")


def extract_boxed(text: str) -> str | None:
    """Contents of the last complete `\\boxed{...}` (nested braces allowed), in one pass.

    "Last" is by where the box opens, so a completion cut off inside its final box still
    yields the box before it, and `\\boxed{\\boxed{1}}` yields 1. Every brace is matched
    once with a stack, so the work is linear in the text whatever its nesting or unclosed
    boxes (scanning to the end from each opener would be quadratic).
    """
    stack: list[int] = []  # per open brace: its content start if it opens a box, else -1
    best_start, best = -1, None
    for m in _BOX_TOKENS.finditer(text):
        tok = m.group()
        if tok == "}":
            if stack:
                start = stack.pop()
                if start > best_start:
                    inner = text[start : m.start()].strip()
                    if inner:
                        best_start, best = start, inner
        elif tok == "{":
            stack.append(-1)
        else:
            stack.append(m.end())
    return best


def _strip_text_wrappers(s: str) -> str:
    """`\\text{ km }` -> `km` where the braces hold no other brace, in one pass (a regex with
    lazy content between two `\\s*` backtracks quadratically on long runs of spaces)."""
    out: list[str] = []
    pos = 0
    opener: re.Match | None = None  # the `\\text{` whose closing brace may come next
    for m in _TEXT_TOKENS.finditer(s):
        if m.group() == "}" and opener is not None:
            out.append(s[pos : opener.start()])
            out.append(s[opener.end() : m.start()].strip())
            pos = m.end()
        opener = m if m.group() != "{" and m.group() != "}" else None
    out.append(s[pos:])
    return "".join(out)


def _clean(answer: str) -> str:
    answer = answer.strip()
    answer = answer.strip("$").strip()
    answer = answer.rstrip(".").strip()
    return answer.strip("$").strip()


def extract_answer(text: str) -> str | None:
    """The completion's final answer as a string, or None when none can be found."""
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    matches = list(_ANSWER_IS.finditer(text))
    if matches:
        tail = text[matches[-1].end() :].split("\n", 1)[0]
        tail = tail.lstrip(" \t:").strip()
        # "The answer is 42. Let me double-check" -> "42": stop at the first sentence end.
        tail = re.split(r"\.\s", tail, maxsplit=1)[0]
        tail = _clean(tail)
        if tail:
            inner = extract_boxed(tail)
            return inner if inner is not None else tail
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def parse_number(answer: str) -> Fraction | None:
    """An exact value for a plain number ("1,000", "-0.5", "3/4", "\\frac{1}{2}"), else None."""
    s = normalize(answer)
    m = _LATEX_FRAC.fullmatch(s)
    if m:
        top, bottom = int(m.group(2) or m.group(3)), int(m.group(4) or m.group(5))
        if bottom == 0:
            return None
        return -Fraction(top, bottom) if m.group(1) else Fraction(top, bottom)
    if not _PLAIN_NUMBER.fullmatch(s):
        return None
    try:
        return Fraction(s.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def normalize(answer: str) -> str:
    """Whitespace-, case- and wrapper-insensitive form used for cheap string equality."""
    s = answer
    for tok in _STRIP_TOKENS:
        s = s.replace(tok, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _strip_text_wrappers(s)
    s = re.sub(r"\s+", "", s).lower()
    return s.rstrip(".")


def numbers_equal(a: Fraction, b: Fraction) -> bool:
    # Exact first (big integers lose precision as floats); then the 6-digit tolerance that
    # math-verify also uses, so "0.333333" matches "1/3".
    return a == b or math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)


def cheap_equal(a: str, b: str) -> bool | None:
    """True/False when decidable in-process (numbers, identical strings); None otherwise."""
    na, nb = parse_number(a), parse_number(b)
    if na is not None and nb is not None:
        return numbers_equal(na, nb)
    if normalize(a) == normalize(b):
        return True
    return None


def gold_answer(raw: object) -> str:
    """The reference answer from a dataset field (boxed, GSM8K '#### 42', or bare)."""
    text = str(raw)
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    if "####" in text:
        return _clean(text.rsplit("####", 1)[1])
    return _clean(text)


def _verify_worker(gold: str, pred: str) -> bool:
    """Runs in a worker process: math-verify on two extracted answers."""
    from math_verify import parse, verify

    # Wrapping in \boxed{} makes math-verify parse bare LaTeX ("\sqrt{4}", "(x+1)^2") too.
    g = parse("\\boxed{" + gold + "}")
    p = parse("\\boxed{" + pred + "}")
    return bool(g) and bool(p) and bool(verify(g, p))


def _warm_worker() -> bool:
    """Imports math-verify (and sympy) so the first real group does not pay for it."""
    return _verify_worker("1", "1")


class VerifyPool:
    """A lazily started pool of spawned processes running math-verify, bounded per group."""

    # Generous bound for the first start (spawn + sympy import), kept out of the group timeout.
    START_TIMEOUT_S = 120.0

    def __init__(self, workers: int, timeout_s: float, fn=None, warm=None):
        """`fn(gold, pred) -> bool` runs in the workers (default math-verify); `warm()` is
        run once per worker at start. Both must be importable module-level functions."""
        self.workers = workers
        self.timeout_s = timeout_s
        self.fn = fn if fn is not None else _verify_worker
        self.warm = warm if warm is not None or fn is not None else _warm_worker
        self._pool = None
        self._lock = threading.Lock()

    def _ensure(self):
        import concurrent.futures as cf
        import multiprocessing as mp

        if self._pool is None:
            # spawn: the learner process holds CUDA and threads, which fork would copy badly.
            self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"))
            if self.warm is not None:
                warm = [self._pool.submit(self.warm) for _ in range(self.workers)]
                cf.wait(warm, timeout=self.START_TIMEOUT_S)
        return self._pool

    def verify(self, pairs: list[tuple[str, str]]) -> tuple[list[bool], int]:
        """(equivalent, per pair; number of pairs that errored or timed out)."""
        import concurrent.futures as cf

        if not pairs:
            return [], 0
        with self._lock:
            pool = self._ensure()
            try:
                futures = [pool.submit(self.fn, g, p) for g, p in pairs]
            except Exception:  # a broken pool (a worker died): start over next time
                logger.exception("math-verify pool is broken; restarting it")
                self._kill()
                return [False] * len(pairs), len(pairs)
            _, pending = cf.wait(futures, timeout=self.timeout_s)
            out, errors = [], 0
            for f in futures:
                if f in pending:
                    out.append(False)
                    errors += 1
                    continue
                try:
                    out.append(bool(f.result()))
                except Exception as e:
                    logger.debug("math-verify failed: %r", e)
                    out.append(False)
                    errors += 1
            if pending:
                logger.warning(
                    "math-verify: %d of %d checks still running after %.1fs; scored 0",
                    len(pending),
                    len(pairs),
                    self.timeout_s,
                )
                # A running task cannot be cancelled: kill the workers so a hung sympy call
                # does not hold a slot forever; the pool restarts on the next group.
                self._kill()
            return out, errors

    def _kill(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # _processes is private, but it is the only handle on workers stuck in C code.
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.terminate()
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


class MathReward:
    """1.0 when the extracted final answer is equivalent to the row's answer, else 0.0."""

    def __init__(self, cfg: RewardConfig):
        self.field = cfg.answer_field
        self.pool = VerifyPool(cfg.verify_workers, cfg.verify_timeout_seconds)

    def __call__(self, inp: RewardInput) -> RewardResult:
        row, completions = inp.row, inp.completions
        if self.field not in row:
            raise KeyError(
                f"reward 'math' needs the answer in row field {self.field!r}; set "
                "reward.answer_field to the dataset's answer column"
            )
        gold = gold_answer(row[self.field])
        answers = [extract_answer(c) for c in completions]
        rewards = [0.0] * len(completions)
        hard: list[int] = []  # completions that need math-verify
        for i, ans in enumerate(answers):
            if ans is None:
                continue
            eq = cheap_equal(gold, ans)
            if eq is None:
                hard.append(i)
            else:
                rewards[i] = 1.0 if eq else 0.0
        results, errors = self.pool.verify([(gold, answers[i]) for i in hard])
        for i, ok in zip(hard, results):
            rewards[i] = 1.0 if ok else 0.0
        n = max(len(completions), 1)
        metrics = {
            "reward_extracted_frac": sum(a is not None for a in answers) / n,
            "reward_errors": float(errors),
        }
        return RewardResult(rewards, metrics)

    def close(self) -> None:
        self.pool.close()

"""Grading: a completion's answer part, its boxed answers, and their math-verify equivalence with
the reference answer, in a pool of worker processes with a per-answer timeout (SPEC §4).

Host-side only (no JAX): the pool's workers import this module, so it stays light.
  answer_boxes(text)        -> the non-empty `\\boxed{...}` contents of the answer part
  answers_match(gold, boxes) -> whether they state the reference answer (math-verify, gold first)
  Grader                     -> answers_match over a batch, in worker processes
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import multiprocessing
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import math_verify
import math_verify.grader
import numpy as np
import pebble
import sympy

if TYPE_CHECKING:  # rewards builds on this module; only the type is needed here.
    from stepgrpo_jax.rewards import RewardConfig

THINK_START, THINK_END = "<think>", "</think>"

# ---------------------------------------------------------------------------------------------
# Answer extraction.
# ---------------------------------------------------------------------------------------------


def split_answer(text: str) -> str | None:
    """The answer part: the text after the last `</think>`; all of it when no thinking tag
    appears; None when a `<think>` was opened and never closed (cut by the budget or by EOS)."""
    answer = text.rpartition(THINK_END)[2]
    return None if THINK_START in answer else answer


_BOX = re.compile(r"\\(?:boxed|fbox)")


def answer_boxes(text: str) -> tuple[str, ...]:
    r"""The non-empty `\boxed{...}` contents of the answer part, in order (nested braces allowed).

    Also accepts `\boxed 5` (one token after a space) and `\fbox{...}`. Empty boxes (the prompt's
    literal `\boxed{}` echoed back) are left out. Empty when there is no answer part, no box, or
    the last box is unbalanced (a truncated answer).
    """
    answer = split_answer(text)
    if answer is None:
        return ()
    boxes, pos = [], 0
    while m := _BOX.search(answer, pos):
        rest = answer[m.end():]
        if not rest.lstrip().startswith("{"):
            token = rest.split(maxsplit=1) if rest[:1].isspace() else []
            boxes.append(token[0].rstrip("$.") if token else "")
            pos = m.end()
            continue
        start = m.end() + len(rest) - len(rest.lstrip())
        end = _closing_brace(answer, start)
        if end is None:
            return ()
        boxes.append(answer[start + 1:end].strip())
        pos = end + 1
    return tuple(b for b in boxes if b)


def _closing_brace(text: str, start: int) -> int | None:
    """Index of the `}` that closes the `{` at `start`; None when it is never closed."""
    depth = 0
    for i in range(start, len(text)):
        depth += (text[i] == "{") - (text[i] == "}")
        if depth == 0:
            return i
    return None


# ---------------------------------------------------------------------------------------------
# Normalisation: the ways people write an answer that math-verify does not read.
# ---------------------------------------------------------------------------------------------

_WRAPPERS = r"text|textbf|textit|textrm|textnormal|textup|mathrm|mathbf|mathit|mathsf|mbox|hbox"
_WRAPPER = re.compile(rf"\\(?:{_WRAPPERS})\s*\{{")
_NUMBER_WORDS = re.compile(r"^\s*(-?\\?\$?\s*[\d.,{}/]*\d[\d.,{}/]*)\s+([A-Za-z][A-Za-z\s.]*)$")
_SIUNITX = re.compile(r"\\(?:num|SI|si|qty)\s*\{([^{}]*)\}(?:\s*\{([^{}]*)\})?")
# 1\,000 / 1\ 000 / 1~000: digit groups split by a thin or hard space (math-verify reads 1*0).
_SPACED_THOUSANDS = re.compile(r"(?<![\d.])\d{1,3}(?:(?:\\[,;: ]|~)\d{3})+(?![\d])")
_CHOICE = re.compile(r"^\(?([A-E])\)(?:\s|\\[ ,;:!]|~|\\quad)*(.*)$", re.DOTALL)
_LETTER = re.compile(r"^\(?([A-E])\)?$")


def _unwrap(answer: str) -> str:
    r"""Text wrappers as math-verify reads them: words stay `\text{...}` (a unit after a value,
    or a word answer), `\text{5 apples}` becomes `5\text{ apples}`, anything else is bare:
    `\textbf{(B)}\ 5` -> `(B)\ 5`, `\mathrm{5}` -> `5`."""
    pos = 0
    while m := _WRAPPER.search(answer, pos):
        end = _closing_brace(answer, m.end() - 1)
        if end is None:
            return answer  # unbalanced: left to math-verify as it is
        content = answer[m.end():end]
        if re.fullmatch(r"[A-Za-z]", content.strip()) and not answer[:m.start()].strip():
            content = content.strip()  # a choice letter or a variable on its own
        elif re.fullmatch(r"[A-Za-z\s.,]*", content):
            content = f"\\text{{{content}}}"
        elif words := _NUMBER_WORDS.match(content):
            content = f"{words[1]}\\text{{ {words[2].strip()}}}"
        answer = answer[:m.start()] + content + answer[end + 1:]
        pos = m.start() + (len(content) if content.startswith("\\text{") else 0)
    return answer


def normalize(answer: str) -> str:
    """One answer string as math-verify should read it (both gold and prediction go through)."""
    answer = _SIUNITX.sub(lambda m: m[1] + (f"\\text{{ {m[2]}}}" if m[2] else ""), answer)
    answer = _unwrap(answer).replace("°", "^\\circ")
    answer = _SPACED_THOUSANDS.sub(lambda m: re.sub(r"\\[,;: ]|~", "", m[0]), answer)
    return answer.strip().rstrip(".;").strip()  # a sentence's full stop


def _choice(answer: str) -> tuple[str | None, str]:
    """(choice letter A-E, value) of `(B)`, `B`, `(B) 5` or `B) 5`; (None, answer) if unlabelled."""
    if m := _LETTER.match(answer):
        return m[1], ""
    if m := _CHOICE.match(answer):
        return m[1], m[2]
    return None, answer


# ---------------------------------------------------------------------------------------------
# Equivalence.
# ---------------------------------------------------------------------------------------------

_mv_numeric_eq = math_verify.grader.sympy_numeric_eq


def _exact_value(x: sympy.Basic) -> sympy.Expr:
    """x with every decimal replaced by the exact rational it writes (0.1 -> 1/10)."""
    floats = {f: sympy.Rational(str(f)) for f in x.atoms(sympy.Float)}
    return sympy.sympify(x.xreplace(floats)).doit()


def _terminates(q: sympy.Expr) -> bool:
    """A rational with a finite decimal expansion (denominator 2^a 5^b). Divides out 2s and 5s
    rather than factorising: the denominator can be 2004!."""
    if not q.is_Rational:
        return False
    d = int(q.q)
    d >>= (d & -d).bit_length() - 1
    while d % 5 == 0:
        d //= 5
    return d == 1


def _plain_number(x: object) -> bool:
    return isinstance(x, sympy.Expr) and bool(x.is_number) and \
        not x.has(sympy.oo, -sympy.oo, sympy.zoo, sympy.nan)


def exact_numeric_eq(a: sympy.Basic, b: sympy.Basic, float_rounding: int,
                     numeric_precision: int) -> bool:
    """math-verify's number comparison, made exact for exact numbers.

    math-verify rounds floats to `float_rounding` decimals (0.0000001 = 0.0000002) and compares
    other numbers by `evalf(chop=True)` (1/2^99 = 1/2^98, 1/2004! = 1/2006!). Here a decimal is the
    exact rational it writes, and two exact values are equal only if they are: rationals by
    arithmetic, other numbers by `simplify`, else at 60 digits with 1e-45 relative tolerance (for
    radicals sympy cannot prove equal). Only a decimal against a value with no finite decimal
    expansion (1/3, pi) is an approximation: math-verify's rounding, and within 0.1% (else 0.0
    would match 1/2004!). `X%` equals X/100 and, as in math-verify, X.
    """
    if not (_plain_number(a) and _plain_number(b)):
        return _mv_numeric_eq(a, b, float_rounding, numeric_precision)
    pct_a, pct_b = math_verify.grader.get_pct_val(a), math_verify.grader.get_pct_val(b)
    values_a = [_exact_value(a)] + ([_exact_value(pct_a)] if pct_a is not None else [])
    values_b = [_exact_value(b)] + ([_exact_value(pct_b)] if pct_b is not None else [])
    approximate = (a.has(sympy.Float) or b.has(sympy.Float)) and not all(
        _terminates(v) for v in values_a[:1] + values_b[:1])
    if approximate:  # math-verify's rounding, and 3 significant digits for tiny values
        x, y = sympy.N(values_a[0], 30), sympy.N(values_b[0], 30)
        return _mv_numeric_eq(a, b, float_rounding, numeric_precision) and \
            bool(abs(x - y) <= sympy.Float("1e-3") * max(abs(x), abs(y)))
    return any(_exactly_equal(x, y) for x in values_a for y in values_b)


def _exactly_equal(x: sympy.Expr, y: sympy.Expr) -> bool:
    if x.is_Rational and y.is_Rational:
        return x == y
    if sympy.simplify(x - y) == 0:
        return True
    scale = max(abs(sympy.N(x, 60)), abs(sympy.N(y, 60)))
    return scale != 0 and bool(abs(sympy.N(x - y, 60)) <= sympy.Float("1e-45") * scale)


# Every math-verify comparison path (numbers, set and tuple elements, interval ends, equation
# sides, matrix entries) calls this module-level function, so replacing it covers them all.
math_verify.grader.sympy_numeric_eq = exact_numeric_eq


def _verify(gold: str, pred: str) -> bool:
    r"""math-verify of two bare answers, gold first (verify is not symmetric). Both are wrapped
    as `\boxed{...}` so that its LaTeX extractor takes the whole answer. Its own signal timeouts
    are off: the Grader enforces ours."""
    parsed_gold = math_verify.parse(f"\\boxed{{{gold}}}", parsing_timeout=None)
    parsed_pred = math_verify.parse(f"\\boxed{{{pred}}}", parsing_timeout=None)
    return bool(math_verify.verify(parsed_gold, parsed_pred, timeout_seconds=None))


def answer_equal(gold: str, pred: str) -> bool:
    """One predicted answer against the reference, both normalised. Multiple choice: when both
    name a choice letter, the letters decide; otherwise the values, by math-verify."""
    (gold_letter, gold), (pred_letter, pred) = _choice(normalize(gold)), _choice(normalize(pred))
    if gold_letter and pred_letter:
        return gold_letter == pred_letter
    return bool(gold and pred) and _verify(gold, pred)


def answers_match(gold: str, boxes: Sequence[str]) -> bool:
    """The last box states the reference answer; or, when it does not, all the boxes together do
    (`\\boxed{2}, \\boxed{3}` for "2, 3")."""
    if not boxes:
        return False
    return answer_equal(gold, boxes[-1]) or (len(boxes) > 1 and
                                             answer_equal(gold, ", ".join(boxes)))


# ---------------------------------------------------------------------------------------------
# The grading pool.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class GradeResult:
    correct: np.ndarray  # [N] bool
    timeouts: int  # answers killed at the per-answer timeout (counted as wrong)


def _warm_up() -> None:
    # math-verify warns once per process that its timeouts are off; that is on purpose here.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    # sympy/antlr imports and the grammar load, before any answer's timeout starts counting.
    answers_match("1", ("1",))


def _grade_one(match_fn: Callable[[str, Sequence[str]], bool], gold: str,
               boxes: Sequence[str]) -> bool:
    try:
        return bool(match_fn(gold, boxes))
    except Exception:  # a grader crash on odd input is a wrong answer, not a dead worker
        return False


class Grader:
    """A reusable pool of grading processes (`pebble.ProcessPool`) with a per-answer timeout.

    `cfg.grader_workers` processes. A pathological answer (sympy can spin for minutes on
    `9^{9^{9^{9}}}`) has its worker killed and replaced after `cfg.grader_timeout_s`; it counts
    as wrong and in `GradeResult.timeouts`. An answer whose worker died (killed for memory) is
    wrong too. Workers are spawned, not forked (the parent is a multithreaded JAX process), and
    warm up before their first answer, so start-up is never charged to an answer.
    `match_fn(gold, boxes) -> bool` must be a picklable module-level function.
    """

    def __init__(self, cfg: RewardConfig,
                 match_fn: Callable[[str, Sequence[str]], bool] = answers_match):
        self.num_workers = cfg.grader_workers
        self.timeout_s = cfg.grader_timeout_s
        self._match_fn = match_fn
        self._pool: pebble.ProcessPool | None = pebble.ProcessPool(
            self.num_workers, initializer=_warm_up,
            context=multiprocessing.get_context("spawn"))
        self._pool.schedule(os.getpid)  # starts the workers now, while the caller does other work

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Blocks until every worker has warmed up; otherwise the first `grade` waits for them."""
        seen, deadline = set(), time.monotonic() + timeout_s
        while len(seen) < self.num_workers:  # a worker answers only once warm
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.num_workers - len(seen)} grading workers not ready "
                                   f"after {timeout_s}s")
            seen.update(f.result() for f in [self._pool.schedule(os.getpid)
                                             for _ in range(self.num_workers)])
            time.sleep(0.05)

    def grade(self, golds: Sequence[str], boxes: Sequence[Sequence[str]]) -> GradeResult:
        """Grades the boxed answers of completion i against gold i; no boxes is wrong, unsent."""
        if len(golds) != len(boxes):
            raise ValueError(f"{len(golds)} golds but {len(boxes)} answers")
        if self._pool is None:
            raise RuntimeError("Grader is closed")
        futures = {i: self._pool.schedule(_grade_one, (self._match_fn, golds[i], tuple(b)),
                                          timeout=self.timeout_s)
                   for i, b in enumerate(boxes) if b}
        correct = np.zeros(len(boxes), dtype=bool)
        timeouts = 0
        for i, future in futures.items():
            try:
                correct[i] = future.result()
            except concurrent.futures.TimeoutError:
                timeouts += 1
            except pebble.ProcessExpired:  # the worker died (e.g. killed for memory): wrong
                pass
        return GradeResult(correct=correct, timeouts=timeouts)

    def close(self) -> None:
        """Stops the workers; a worker stuck on an answer is killed rather than waited for."""
        if self._pool is None:
            return
        self._pool.stop()
        self._pool.join()
        self._pool = None

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Tests for stepgrpo_jax.grading: the answer part, boxes, equivalence kinds, the grading pool.

Each equivalence table is one kind of real input (SPEC §4): the issue's example first, then
more inputs of the same kind, right and wrong. They run in-process (`answers_match` is pure);
the pool tests run the same function in worker processes.
"""

import os
import time

import numpy as np
import pytest

from stepgrpo_jax import grading, rewards


def _cfg(workers: int, timeout_s: float = 5.0) -> rewards.RewardConfig:
    return rewards.RewardConfig(grader_workers=workers, grader_timeout_s=timeout_s)


def _hooked_match(gold: str, boxes) -> bool:
    """Grading function for the pool tests; module-level so spawned workers can unpickle it."""
    if not boxes:
        return True  # an empty answer must never reach a worker; this would make it "correct"
    if boxes[-1] == "HANG":
        time.sleep(60)
    if boxes[-1] == "CRASH":
        os._exit(3)
    return grading.answers_match(gold, boxes)


@pytest.fixture(scope="module")
def hooked_grader():
    with grading.Grader(_cfg(2, 1.0), match_fn=_hooked_match) as g:
        g.wait_ready()  # so that the timings below measure grading only
        yield g


# ------------------------------------------------------------------------------ extraction


@pytest.mark.parametrize("text, expected", [
    (r"so \boxed{\frac{1}{2}}.", (r"\frac{1}{2}",)),
    (r"\boxed{1} or rather \boxed{2}", ("1", "2")),
    (r"<think>maybe \boxed{7}</think> The answer is \boxed{8}.", ("8",)),
    (r"<think>maybe \boxed{7}</think> The answer is 7.", ()),
    (r"<think>a</think> \boxed{1} <think>b</think> \boxed{2}", ("2",)),
    (r"\boxed{\frac{1}{2}", ()),
    (r"\boxed{1} then \boxed{2", ()),  # last box truncated
    ("no box at all", ()),
    (r"put it in \boxed{}", ()),
    (r"\boxed{5} as asked: \boxed{}", ("5",)),  # a trailing empty box hides nothing
    (r"\boxed{5} \boxed{ } \boxed{}", ("5",)),
    (r"\boxed 5", ("5",)),
    (r"$\boxed 5$.", ("5",)),
    (r"\boxed {3}", ("3",)),
    (r"\fbox{3}", ("3",)),
    (r"\boxed{\{1, 2\}}", (r"\{1, 2\}",)),
    (r"\boxed{2} and \boxed{3}", ("2", "3")),
])
def test_answer_boxes(text, expected):
    assert grading.answer_boxes(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("a</think>b</think>c", "c"),
    ("no think tags", "no think tags"),
    ("<think>\n\\boxed{5}", None),  # opened, never closed: no answer part
    ("<think>", None),
    ("<think>a</think>b<think>c", None),  # opened again after the last close
    ("<think>a</think", None),  # the closing tag itself cut off
    ("</think>only a close", "only a close"),
    ("<think>a</think>", ""),
])
def test_split_answer(text, expected):
    assert grading.split_answer(text) == expected


# ------------------------------------------------------------------------------ equivalence

EXACT_NUMBERS = [  # (gold, pred, correct)
    ("0.0000001", "0.0000002", False),
    (r"\frac{1}{2^{99}}", r"\frac{1}{2^{98}}", False),
    ("1/2004!", "1/2006!", False),
    ("0.5", r"\frac12", True),
    ("0.5", r"\dfrac{1}{2}", True),
    ("0.5", "1/2", True),
    ("0.5", "0.50", True),
    # More of the kind.
    ("1/2004!", r"\frac{1}{2004!}", True),
    ("10^{-30}", "10^{-31}", False),
    ("123456789012345678", "123456789012345679", False),
    ("2^{100}", "2^{100}+1", False),
    ("1", "1.0000001", False),
    ("0.1+0.2", "0.3", True),  # exact decimals: no binary residue
    (r"\sqrt{2}", r"\sqrt{2}+10^{-30}", False),
    (r"\frac{\sqrt{6}}{2}", r"\sqrt{\frac{3}{2}}", True),
    (r"1+\sqrt{2}", r"\sqrt{3+2\sqrt{2}}", True),
    (r"\{0.0000001, 2\}", r"\{0.0000002, 2\}", False),  # inside sets
    ("x = 0.0000001", "x = 0.0000002", False),  # inside equations
    ("(0.0000001, 1]", "(0.0000002, 1]", False),  # interval ends
    ("1500", r"1.5\times10^{3}", True),
    ("3", "3.0", True),
    ("0.00001", "0.00001", True),  # a JSON 1e-05 gold as data.py writes it
    ("0.00001", "e-5", False),
    # A decimal against a value with no finite decimal expansion keeps math-verify's rounding.
    (r"\frac{1}{3}", "0.333333", True),
    (r"\frac{1}{3}", "0.33", False),
    (r"\pi", "3.141593", True),
    ("1/2004!", "0.0", False),  # a huge denominator: no factorising, and 0 is not close
    (r"\frac{10^{-9}}{3}", "0.000000001", False),
    (r"\frac{1}{3000}", "0.000333", True),
    ("2.5", "2.50000", True),
]

WRAPPED = [
    ("5", r"\text{5 apples}", True),
    ("12", r"\text{12 cm}", True),
    ("5", r"\textbf{(B)}\ 5", True),
    ("B", r"\textbf{(B)}\ 5", True),
    # More of the kind.
    ("C", r"\textbf{(B)}\ 5", False),
    ("6", r"\textbf{(B)}\ 5", False),
    ("B", "5", False),  # a value alone does not name a choice
    (r"\text{(B)}", "B", True),
    (r"\text{(B)}", "(B)", True),
    (r"\textbf{(B) }5", "(B)", True),  # a gold with letter and value
    (r"\textbf{(B) }5", "5", True),
    (r"\textbf{(B) }5", "6", False),
    (r"\text{(A)}", r"\text{(A) }\frac{1}{2}", True),
    ("5", r"\mbox{5 apples}", True),
    ("5", r"\mathrm{5}", True),
    ("5", r"\textbf{5}", True),
    ("5", r"5\text{ m}", True),
    ("12", r"12\text{ cm}^2", True),
    ("12", r"12\, \text{cm}", True),
    ("5", "5 apples", True),
    ("5", r"\text{6 apples}", False),
    ("B", r"\text{B}", True),
    ("B", r"\mathbf{(B)}", True),
    ("B", r"\textbf{(B) }\ 5", True),
    ("5", r"5\ \text{apples}", True),
    ("5", r"5 \mbox{ dollars}", True),
    ("-3", r"\text{-3 degrees}", True),
    ("1000", r"\text{1,000 people}", True),
    (r"\frac{1}{2}", r"\text{1/2 cup}", True),
    ("5", r"\text{five}", False),  # number words are not read
    (r"\text{yes}", r"\text{Yes}", True),
    (r"\text{yes}", r"\text{no}", False),
]

FORMATTED_NUMBERS = [
    ("1000", "1{,}000", True),
    ("1000", "1,000", True),
    ("1000", r"1\,000", True),
    ("1000", "1\\ 000", True),
    ("1000000", r"1\,000\,000", True),
    ("1000", r"1\,001", False),
    ("5", r"\$5", True),
    ("-5", r"-\$5", True),
    ("1000.5", r"\$1,000.50", True),
    ("5", r"5\%", True),
    ("0.05", r"5\%", True),
    ("6", r"5\%", False),
    ("1000", "10^{3}", True),
    ("1000", r"\num{1000}", True),
    ("12", r"\SI{12}{cm}", True),
    ("90", "90°", True),
    ("90", r"90^\circ", True),
    ("5", "5.", True),
    (r"\frac{3}{2}", r"1\frac{1}{2}", True),  # a mixed number
]

SEVERAL_BOXES = [  # (gold, completion, correct)
    ("2, 3", r"\boxed{2} and \boxed{3}", True),
    ("5", r"\boxed{5} Put your answer in \boxed{}", True),
    # More of the kind.
    ("2, 3", r"\boxed{2}, \boxed{3}", True),
    ("2, 3", r"\boxed{3}, \boxed{2}", True),  # math-verify reads "2, 3" as a set
    ("2, 3", r"\boxed{3}", False),
    ("2, 3", r"\boxed{2}, \boxed{3}, \boxed{4}", False),
    ("2, 3", r"<think>\boxed{2}</think> so \boxed{3}", False),  # only the answer part's boxes
    ("3", r"\boxed{2} no, \boxed{3}", True),  # the last box alone
    ("2", r"\boxed{2} no, \boxed{3}", False),
    ("5", r"\boxed{5} \boxed{ }", True),
    ("5", r"\boxed{5} or maybe \boxed{6}", False),  # hedging over boxes earns nothing
    (r"\{2, 3\}", r"\boxed{2}, \boxed{3}", True),
    ("(1, 2), (3, 4)", r"\boxed{(1, 2)} and \boxed{(3, 4)}", True),
    ("5", r"<think>\boxed{5}", False),
]


@pytest.mark.parametrize("gold, pred, correct", EXACT_NUMBERS + WRAPPED + FORMATTED_NUMBERS)
def test_answer_equivalence(gold, pred, correct):
    assert grading.answers_match(gold, (pred,)) == correct
    assert grading.answers_match(gold, grading.answer_boxes(rf"\boxed{{{pred}}}")) == correct


@pytest.mark.parametrize("gold, text, correct", SEVERAL_BOXES)
def test_several_boxes(gold, text, correct):
    assert grading.answers_match(gold, grading.answer_boxes(text)) == correct


def test_math_verify_cases_kept():
    cases = [  # (gold, pred, correct)
        (r"\frac{1}{2}", "0.5", True),
        (r"\text{(A)}", "A", True),
        (r"\text{(A)}", "B", False),
        ("3", "4", False),
        (r"2\sqrt{2}", r"\sqrt{8}", True),
        ("x^2+1", "1+x^2", True),
        ("5", "x = 5", True),
    ]
    assert [grading.answers_match(g, (p,)) for g, p, _ in cases] == [c for _, _, c in cases]


# ------------------------------------------------------------------------------ the pool


def test_pool_grades_like_answers_match(hooked_grader):
    golds = [gold for gold, _, _ in WRAPPED]
    boxes = [(pred,) for _, pred, _ in WRAPPED]
    res = hooked_grader.grade(golds, boxes)
    np.testing.assert_array_equal(res.correct, [c for _, _, c in WRAPPED])
    assert res.timeouts == 0


def test_no_answer_is_wrong_without_a_worker(hooked_grader):
    res = hooked_grader.grade(["1", "1"], [(), ("1",)])
    np.testing.assert_array_equal(res.correct, [False, True])


def test_timeout_kills_hung_worker_and_rest_of_batch_is_graded(hooked_grader):
    golds = ["1", r"\frac{1}{2}", "3", "4", "5", "6"]
    boxes = [("HANG",), ("0.5",), ("3",), ("5",), ("5",), ("6",)]
    t0 = time.monotonic()
    res = hooked_grader.grade(golds, boxes)
    elapsed = time.monotonic() - t0
    np.testing.assert_array_equal(res.correct, [False, True, True, False, True, True])
    assert res.timeouts == 1
    assert 0.9 <= elapsed < 1.0 + 2.5, elapsed
    # The killed worker was replaced: the pool keeps working.
    again = hooked_grader.grade(["2", "2"], [("2",), ("3",)])
    np.testing.assert_array_equal(again.correct, [True, False])
    assert again.timeouts == 0


def test_crashed_worker_is_wrong_and_replaced(hooked_grader):
    res = hooked_grader.grade(["1", "2"], [("CRASH",), ("2",)])
    np.testing.assert_array_equal(res.correct, [False, True])
    assert res.timeouts == 0
    np.testing.assert_array_equal(hooked_grader.grade(["7"], [("7",)]).correct, [True])


def test_real_pathological_answer_is_cut_off():
    # sympy spins for minutes on this tower (math-verify 0.9); the pool must cut it off.
    t0 = time.monotonic()
    with grading.Grader(_cfg(2, 1.0)) as grader:
        res = grader.grade(["1", r"\frac{1}{2}", "3"], [(r"9^{9^{9^{9}}}",), ("0.5",), ("3",)])
    np.testing.assert_array_equal(res.correct, [False, True, True])
    assert res.timeouts == 1
    assert time.monotonic() - t0 < 30  # start-up of two workers plus one timeout


def test_grade_validation():
    with grading.Grader(_cfg(1)) as grader, pytest.raises(ValueError, match="golds"):
        grader.grade(["1"], [("1",), ("2",)])
    with pytest.raises(RuntimeError, match="closed"):
        grader.grade(["1"], [("1",)])
    with pytest.raises(ValueError, match="grader_timeout_s > 0"):
        rewards.RewardConfig(grader_timeout_s=0)
    with pytest.raises(ValueError, match="grader_workers >= 1"):
        rewards.RewardConfig(grader_workers=0)

"""Tests for stepgrpo_jax.rewards: step counting, extraction, grading pool, group rewards."""

import os
import time
import types

import numpy as np
import pytest

from stepgrpo_jax import rewards


def _hooked_verify(gold: str, pred: str) -> bool:
    """Grading function for the pool tests; module-level so spawned workers can unpickle it."""
    if pred is None:
        return True  # a None pred must never reach a worker; this would make it "correct"
    if pred == "HANG":
        time.sleep(60)
    if pred == "CRASH":
        os._exit(3)
    return rewards.math_verify_equal(gold, pred)


@pytest.fixture(scope="module")
def grader():
    with rewards.Grader(num_workers=2, timeout_s=10.0) as g:
        yield g


@pytest.fixture(scope="module")
def hooked_grader():
    with rewards.Grader(num_workers=2, timeout_s=1.0, verify_fn=_hooked_verify) as g:
        g.wait_ready()  # so that the timings below measure grading only
        yield g


# ------------------------------------------------------------------------------ steps


@pytest.mark.parametrize("text, expected", [
    ("Wait", 2),
    ("Waiting", 1),
    ("wait", 1),
    ("(Wait)", 2),
    ("Wait, no.", 2),
    ("AWait", 1),
    ("Wait5", 2),  # only letters block a match
    ("5Wait", 2),
    ("Hmm. Wait. Wait!\n\nWait", 4),
    ("", 1),
])
def test_count_steps(text, expected):
    assert rewards.count_steps(text) == expected


def test_count_triggers_removes_space_around_tag_chars():
    text = "1 < / think > 2 </think> 3"  # squeezed to "1</think>2</think>3"
    assert rewards.count_triggers(text, ("</think>",)) == 2
    assert rewards.count_triggers("1 / Wait", ("/Wait",)) == 1


def test_count_steps_multiple_triggers():
    text = "Wait. Alternatively, Wait, Alternatives"
    assert rewards.count_triggers(text, ("Wait", "Alternatively")) == 3
    assert rewards.count_steps(text, ("Wait", "Alternatively")) == 4
    assert rewards.count_steps(text, ("Alternatively",)) == 2


# ------------------------------------------------------------------------------ extraction


@pytest.mark.parametrize("text, expected", [
    (r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
    (r"\boxed{1} or rather \boxed{2}", "2"),
    (r"<think>maybe \boxed{7}</think> The answer is \boxed{8}.", "8"),
    (r"<think>maybe \boxed{7}</think> The answer is 7.", None),
    (r"<think>a</think> \boxed{1} <think>b</think> \boxed{2}", "2"),
    (r"<think>unfinished \boxed{7}", "7"),  # thinking never closed: the whole text
    (r"\boxed{\frac{1}{2}", None),
    (r"\boxed{1} then \boxed{2", None),  # last box truncated
    ("no box at all", None),
    (r"put it in \boxed{}", None),
    (r"\boxed 5", "5"),
    (r"$\boxed 5$.", "5"),
    (r"\boxed {3}", "3"),
    (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
])
def test_extract_boxed(text, expected):
    assert rewards.extract_boxed(text) == expected


def test_split_answer():
    assert rewards.split_answer("a</think>b</think>c") == "c"
    assert rewards.split_answer("no think end") == "no think end"


# ------------------------------------------------------------------------------ grading


def test_grade_equivalences(grader):
    cases = [  # (gold, pred, correct)
        (r"\frac{1}{2}", "0.5", True),
        ("0.5", r"\frac{1}{2}", True),
        (r"\text{(A)}", "A", True),  # choice letters: both sides wrapped as \boxed{...}
        (r"\text{(A)}", "(A)", True),
        ("A", r"\text{(A)}", True),
        (r"\text{(A)}", "B", False),
        ("3", "4", False),
        ("3", "3.0", True),
        (r"2\sqrt{2}", r"\sqrt{8}", True),
        ("1", None, False),
    ]
    golds, preds, expected = zip(*cases, strict=True)
    res = grader.grade(golds, preds)
    np.testing.assert_array_equal(res.correct, expected)
    assert res.timeouts == 0


def test_none_pred_is_wrong_without_a_worker(hooked_grader):
    res = hooked_grader.grade(["1", "1"], [None, "1"])
    np.testing.assert_array_equal(res.correct, [False, True])


def test_timeout_kills_hung_worker_and_rest_of_batch_is_graded(hooked_grader):
    golds = ["1", r"\frac{1}{2}", "3", "4", "5", "6"]
    preds = ["HANG", "0.5", "3", "5", "5", "6"]
    t0 = time.monotonic()
    res = hooked_grader.grade(golds, preds)
    elapsed = time.monotonic() - t0
    np.testing.assert_array_equal(res.correct, [False, True, True, False, True, True])
    assert res.timeouts == 1
    assert 0.9 <= elapsed < 1.0 + 2.5, elapsed
    # The killed worker was replaced: the pool keeps working.
    again = hooked_grader.grade(["2", "2"], ["2", "3"])
    np.testing.assert_array_equal(again.correct, [True, False])
    assert again.timeouts == 0


def test_crashed_worker_is_wrong_and_replaced(hooked_grader):
    res = hooked_grader.grade(["1", "2"], ["CRASH", "2"])
    np.testing.assert_array_equal(res.correct, [False, True])
    assert res.timeouts == 0
    np.testing.assert_array_equal(hooked_grader.grade(["7"], ["7"]).correct, [True])


def test_grade_batch_real_pathological_answer():
    # sympy spins for minutes on this tower (math-verify 0.9); the parent must cut it off.
    t0 = time.monotonic()
    res = rewards.grade_batch(["1", r"\frac{1}{2}", "3"], [r"9^{9^{9^{9}}}", "0.5", "3"],
                              timeout_s=1.0, num_workers=2)
    np.testing.assert_array_equal(res.correct, [False, True, True])
    assert res.timeouts == 1
    assert time.monotonic() - t0 < 30  # start-up of two workers plus one timeout


def test_grade_length_mismatch(grader):
    with pytest.raises(ValueError, match="golds"):
        grader.grade(["1"], ["1", "2"])


# ------------------------------------------------------------------------------ step reward


def test_step_aware_worked_example():
    r = rewards.step_aware_rewards([1, 1, 0], [1, 1, 1], [2, 6, 3])
    np.testing.assert_allclose(r, [1.2080, 0.7920, 0.1], atol=1e-4)


def test_step_aware_no_correct():
    r = rewards.step_aware_rewards([0, 0, 0], [1, 0, 1], [2, 6, 3])
    np.testing.assert_allclose(r, [0.1, 0.0, 0.1], atol=1e-12)


def test_step_aware_single_correct_gets_full_reward():
    r = rewards.step_aware_rewards([0, 1, 0], [1, 1, 0], [2, 9, 3])
    np.testing.assert_allclose(r, [0.1, 1.0, 0.0], atol=1e-12)


def test_step_aware_equal_steps():
    r = rewards.step_aware_rewards([1, 1, 1], [1, 1, 1], [4, 4, 4])
    np.testing.assert_allclose(r, [1.0, 1.0, 1.0], atol=1e-12)


def test_step_aware_all_sample_mu_differs():
    args = ([True, True, False], [True, True, True], [2, 6, 10])
    np.testing.assert_allclose(rewards.step_aware_rewards(*args, baseline="correct"),
                               [1.207953, 0.792047, 0.1], atol=1e-6)
    np.testing.assert_allclose(rewards.step_aware_rewards(*args, baseline="all"),
                               [1.262252, 1.0, 0.1], atol=1e-6)  # mu = 6


def test_step_aware_correct_but_unformatted():
    r = rewards.step_aware_rewards([1, 1], [0, 1], [2, 6])
    np.testing.assert_allclose(r, [1.107953, 0.792047], atol=1e-6)


def test_step_aware_custom_alpha_beta():
    # alpha=0.5, beta=1: k=2, mu=4 -> 0.5*(1 + tanh(0.5)) + 0.5
    r = rewards.step_aware_rewards([1, 1], [1, 1], [2, 6], alpha=0.5, beta=1.0)
    np.testing.assert_allclose(r, [1.231059, 0.768941], atol=1e-6)


@pytest.mark.parametrize("args, kwargs, match", [
    (([1, 0], [1, 1], [2, 3, 4]), {}, "differ in length"),
    (([1, 0], [1], [2, 3]), {}, "differ in length"),
    (([], [], []), {}, "empty"),
    (([1, 0], [1, 1], [2, 3]), {"baseline": "mean"}, "baseline"),
    (([1, 0], [1, 1], [0, 3]), {}, ">= 1"),
    (([2, 0], [1, 1], [1, 3]), {}, "boolean"),
    (([[1, 0]], [[1, 1]], [[1, 3]]), {}, "1-D"),
])
def test_step_aware_validation(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        rewards.step_aware_rewards(*args, **kwargs)


# ------------------------------------------------------------------------------ baselines


def test_accuracy_format_rewards():
    r = rewards.accuracy_format_rewards([1, 0, 1, 0], [1, 1, 0, 0])
    np.testing.assert_allclose(r, [1.0, 0.1, 0.9, 0.0], atol=1e-12)


def test_accuracy_rewards():
    np.testing.assert_array_equal(rewards.accuracy_rewards([True, False, True]), [1.0, 0.0, 1.0])


def test_length_penalty_rewards():
    # lam = 0.5 - (len - 100)/200 = [0.5, 0, -0.5]
    np.testing.assert_allclose(rewards.length_penalty_rewards([1, 1, 0], [100, 200, 300]),
                               [1.5, 1.0, -0.5], atol=1e-12)
    # A wrong short answer gets min(0, lam) = 0, not the bonus; a correct long one gets lam < 0.
    np.testing.assert_allclose(rewards.length_penalty_rewards([0, 1, 1], [100, 200, 300]),
                               [0.0, 1.0, 0.5], atol=1e-12)
    np.testing.assert_allclose(rewards.length_penalty_rewards([1, 0], [50, 50]), [1.0, 0.0])


def test_overlong_penalty():
    r = rewards.overlong_penalty([50, 80, 90, 100, 101], max_len=100, cache_len=20)
    np.testing.assert_allclose(r, [0.0, 0.0, -0.5, -1.0, -1.0], atol=1e-12)
    with pytest.raises(ValueError, match="cache_len"):
        rewards.overlong_penalty([1], max_len=10, cache_len=0)


@pytest.mark.parametrize("cfg", [
    {"alpha": 0.9, "beta": 0.5},
    types.SimpleNamespace(alpha=0.9, beta=0.5, overlong=False),
])
@pytest.mark.parametrize("kind, expected", [
    ("step_grpo", [1.207953, 0.792047, 0.1]),
    ("step_grpo_all_mu", [1.262252, 1.0, 0.1]),
    ("no_step", [1.0, 1.0, 0.1]),
    ("grpo", [1.0, 1.0, 0.0]),
    ("grpo_lp", [1.5, 1.0, -0.5]),
])
def test_group_rewards_kinds(cfg, kind, expected):
    r = rewards.group_rewards(kind, [1, 1, 0], [1, 1, 1], [2, 6, 10], [100, 200, 300], cfg)
    np.testing.assert_allclose(r, expected, atol=1e-6)


def test_group_rewards_overlong_and_unknown_kind():
    cfg = {"alpha": 0.9, "beta": 0.5, "overlong": True, "overlong_max_len": 300,
           "overlong_cache_len": 200}
    r = rewards.group_rewards("grpo", [1, 1, 0], [1, 1, 1], [2, 6, 10], [100, 200, 300], cfg)
    np.testing.assert_allclose(r, [1.0, 0.5, -1.0], atol=1e-12)
    with pytest.raises(ValueError, match="unknown reward kind"):
        rewards.group_rewards("dapo", [1], [1], [1], [1], cfg)


# ------------------------------------------------------------------------------ scoring


def test_score_completions(grader):
    texts = [
        r"<think>x</think> \boxed{\frac{1}{2}}",  # group 0: correct, 1 step
        r"<think>x Wait y Wait z</think> \boxed{0.5}",  # correct, 3 steps (mu = 2)
        r"<think>x Wait</think> \boxed{7}",  # wrong, formatted
        r"<think>x</think> the answer is 1/2",  # wrong, unformatted
        r"<think>Wait</think> \boxed{4}",  # group 1: all wrong
        r"<think>x</think> \boxed{}",
    ]
    cfg = {"alpha": 0.9, "beta": 0.5}
    r, info = rewards.score_completions(texts, [r"\frac{1}{2}", "3"], np.full(6, 10), 3,
                                        "step_grpo", cfg, grader)
    np.testing.assert_array_equal(info["correct"], [1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(info["formatted"], [1, 1, 1, 0, 1, 0])
    np.testing.assert_array_equal(info["steps"], [1, 3, 2, 1, 2, 1])
    assert info["grader_timeouts"] == 0
    # mu = 2: 0.9*(1 -+ 0.5*tanh(0.5)) + 0.1
    np.testing.assert_allclose(r, [1.207953, 0.792047, 0.1, 0.0, 0.1, 0.0], atol=1e-6)
    # One gold per completion gives the same result.
    golds = [r"\frac{1}{2}"] * 3 + ["3"] * 3
    r2, _ = rewards.score_completions(texts, golds, np.full(6, 10), 3, "step_grpo", cfg, grader)
    np.testing.assert_allclose(r2, r)


def test_score_completions_validation(grader):
    cfg = {"alpha": 0.9, "beta": 0.5}
    with pytest.raises(ValueError, match="groups of"):
        rewards.score_completions(["a"] * 5, ["1"] * 5, np.ones(5), 2, "grpo", cfg, grader)
    with pytest.raises(ValueError, match="golds"):
        rewards.score_completions(["a"] * 4, ["1"] * 3, np.ones(4), 2, "grpo", cfg, grader)
    with pytest.raises(ValueError, match="lengths"):
        rewards.score_completions(["a"] * 4, ["1"] * 2, np.ones(3), 2, "grpo", cfg, grader)

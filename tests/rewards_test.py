"""Tests for stepgrpo_jax.rewards: step counting, group rewards, scoring completions."""

import dataclasses

import numpy as np
import pytest

from stepgrpo_jax import grading, rewards


@pytest.fixture(scope="module")
def grader():
    with grading.Grader(rewards.RewardConfig(grader_workers=2, grader_timeout_s=10.0)) as g:
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


@pytest.mark.parametrize("kind, expected", [
    ("step_grpo", [1.207953, 0.792047, 0.1]),
    ("step_grpo_all_mu", [1.262252, 1.0, 0.1]),
    ("no_step", [1.0, 1.0, 0.1]),
    ("grpo", [1.0, 1.0, 0.0]),
    ("grpo_lp", [1.5, 1.0, -0.5]),
])
def test_group_rewards_kinds(kind, expected):
    cfg = rewards.RewardConfig(kind=kind, alpha=0.9, beta=0.5)
    r = rewards.group_rewards(cfg, [1, 1, 0], [1, 1, 1], [2, 6, 10], [100, 200, 300])
    np.testing.assert_allclose(r, expected, atol=1e-6)


def test_group_rewards_overlong():
    cfg = rewards.RewardConfig(kind="grpo", overlong=True, overlong_max_len=300,
                               overlong_cache_len=200)
    r = rewards.group_rewards(cfg, [1, 1, 0], [1, 1, 1], [2, 6, 10], [100, 200, 300])
    np.testing.assert_allclose(r, [1.0, 0.5, -1.0], atol=1e-12)


@pytest.mark.parametrize("fields, match", [
    ({"kind": "dapo"}, "unknown reward kind"),
    ({"overlong": True, "overlong_max_len": 100, "overlong_cache_len": 0}, "overlong"),
    ({"overlong": True, "overlong_max_len": 100, "overlong_cache_len": 101}, "overlong"),
])
def test_reward_config_rejects_bad_fields(fields, match):
    with pytest.raises(ValueError, match=match):
        rewards.RewardConfig(**fields)


def test_reward_config_is_frozen_and_from_config():
    from configs import default

    config = default.get_config()
    cfg = rewards.RewardConfig.from_config(config)
    assert cfg == rewards.RewardConfig(overlong_max_len=config.sampling.max_new_tokens)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.alpha = 1.0


# ------------------------------------------------------------------------------ scoring


STEP_GRPO = rewards.RewardConfig(kind="step_grpo", alpha=0.9, beta=0.5)


def test_score_completions(grader):
    texts = [
        r"<think>x</think> \boxed{\frac{1}{2}}",  # group 0: correct, 1 step
        r"<think>x Wait y Wait z</think> \boxed{0.5}",  # correct, 3 steps (mu = 2)
        r"<think>x Wait</think> \boxed{7}",  # wrong, formatted
        r"<think>x</think> the answer is 1/2",  # wrong, unformatted
        r"<think>Wait</think> \boxed{4}",  # group 1: all wrong
        r"<think>x</think> \boxed{}",
    ]
    r, info = rewards.score_completions(texts, [r"\frac{1}{2}", "3"], np.full(6, 10), 3,
                                        STEP_GRPO, grader)
    np.testing.assert_array_equal(info["correct"], [1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(info["formatted"], [1, 1, 1, 0, 1, 0])
    np.testing.assert_array_equal(info["steps"], [1, 3, 2, 1, 2, 1])
    assert info["grader_timeouts"] == 0
    # mu = 2: 0.9*(1 -+ 0.5*tanh(0.5)) + 0.1
    np.testing.assert_allclose(r, [1.207953, 0.792047, 0.1, 0.0, 0.1, 0.0], atol=1e-6)
    # One gold per completion gives the same result.
    golds = [r"\frac{1}{2}"] * 3 + ["3"] * 3
    r2, _ = rewards.score_completions(texts, golds, np.full(6, 10), 3, STEP_GRPO, grader)
    np.testing.assert_allclose(r2, r)


def test_score_completions_unclosed_thinking_has_no_answer(grader):
    texts = ["<think>\n\\boxed{5}",  # cut by the budget or EOS while thinking
             "<think>a</think>b<think>\\boxed{5}",  # thinking opened again, never closed
             "<think>\\boxed{5}</think",  # the closing tag itself cut
             "<think>x</think>\n\n\\boxed{5}",  # closed: graded
             "\\boxed{5}"]  # no thinking at all (a non-thinking model): all of it is the answer
    _, info = rewards.score_completions(texts, ["5"], np.full(5, 10), 5, STEP_GRPO, grader)
    np.testing.assert_array_equal(info["correct"], [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(info["formatted"], [0, 0, 0, 1, 1])


def test_score_completions_validation(grader):
    cfg = rewards.RewardConfig(kind="grpo")
    with pytest.raises(ValueError, match="groups of"):
        rewards.score_completions(["a"] * 5, ["1"] * 5, np.ones(5), 2, cfg, grader)
    with pytest.raises(ValueError, match="golds"):
        rewards.score_completions(["a"] * 4, ["1"] * 3, np.ones(4), 2, cfg, grader)
    with pytest.raises(ValueError, match="lengths"):
        rewards.score_completions(["a"] * 4, ["1"] * 2, np.ones(3), 2, cfg, grader)

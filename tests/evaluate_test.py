"""Evaluation numbers against hand-computed ones, with a scripted sampler."""

import json

import jax
import numpy as np
import pytest

from stepgrpo_jax import data, evaluate, grading, rewards, sampling, tokenizer


class ScriptedSampler:
    """Returns fixed completion texts in order, like `sampling.Engine.rollout` would."""

    def __init__(self, tok, texts):
        self.tok, self.texts, self.calls = tok, list(texts), 0

    def rollout(self, params, prompts, group_size, rng, progress=False):
        del params, rng, progress
        n = len(prompts) * group_size
        batch = [self.texts.pop(0) if self.texts else "" for _ in range(n)]
        ids = [self.tok.encode(t, add_special_tokens=False) for t in batch]
        width = max(map(len, ids))
        tokens = np.zeros((len(ids), width), np.int32)
        for i, row in enumerate(ids):
            tokens[i, :len(row)] = row
        n = len(ids)
        zeros = np.zeros(n, np.int32)
        self.calls += 1
        return sampling.SampleOutput(
            tokens=tokens, logprobs=np.zeros(tokens.shape, np.float32),
            forced=np.zeros(tokens.shape, bool), lengths=np.array([len(r) for r in ids]),
            step_counts=zeros + 1, num_probes=zeros, exit_reasons=zeros, think_end=zeros,
            num_steps=width)


@pytest.fixture(scope="module")
def grader():
    with grading.Grader(rewards.RewardConfig(grader_workers=1, grader_timeout_s=20.0)) as g:
        yield g


def test_accuracy_tokens_and_steps_by_hand(qwen3_tokenizer_dir, grader):
    tok = tokenizer.load(qwen3_tokenizer_dir)
    problems = [data.Problem("1+1?", "2", "f:1"), data.Problem("half of 1?", "\\frac{1}{2}", "f:2")]
    # Two samples per problem: (right, right with a Wait), (0.5 = 1/2 right, unboxed).
    texts = ["<think>\nok</think>\n\n\\boxed{2}", "<think>\nWait, yes.</think>\n\n\\boxed{2}",
             "<think>\nhm</think>\n\n\\boxed{0.5}", "<think>\nWait Wait</think>\n\nno box"]
    sampler = ScriptedSampler(tok, texts)
    lengths = [len(tok.encode(t, add_special_tokens=False)) for t in texts]
    result = evaluate.evaluate_problems(sampler, None, tok, problems, num_samples=2,
                                        grader=grader, rng=jax.random.key(0))
    assert result["accuracy"] == pytest.approx(3 / 4)  # pass@1 averaged over k=2.
    assert result["format_rate"] == pytest.approx(3 / 4)
    assert result["response_tokens_mean"] == pytest.approx(np.mean(lengths))
    assert result["steps_mean"] == pytest.approx((1 + 2 + 1 + 3) / 4)
    assert [r["correct"] for r in result["records"]] == [True, True, True, False]
    assert sampler.calls == 1


def test_unclosed_thinking_has_no_answer(qwen3_tokenizer_dir, grader):
    tok = tokenizer.load(qwen3_tokenizer_dir)
    problems = [data.Problem("1+1?", "2", "f:1")]
    texts = ["<think>\n\\boxed{2}", "<think>\nok</think>\n\n\\boxed{2}"]  # cut, closed
    result = evaluate.evaluate_problems(ScriptedSampler(tok, texts), None, tok, problems,
                                        num_samples=2, grader=grader, rng=jax.random.key(0))
    assert [(r["correct"], r["formatted"]) for r in result["records"]] == [(False, False),
                                                                          (True, True)]


def test_compression_and_table(tmp_path):
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"benchmarks": {"gsm8k": {"response_tokens_mean": 200.0}}}))
    results = {"gsm8k": {"accuracy": 0.5, "response_tokens_mean": 150.0, "steps_mean": 2.0},
               "other": {"accuracy": 1.0, "response_tokens_mean": 10.0, "steps_mean": 1.0}}
    assert evaluate.compression(results, str(base)) == {"gsm8k": 0.75}
    results["gsm8k"]["compression"] = 0.75
    table = evaluate.format_table(results)
    assert "gsm8k" in table and "75.0%" in table and "50.0%" in table


def test_eval_batch_that_does_not_divide_over_the_mesh():
    from configs import default

    c = default.get_config()
    c.model_dir, c.eval.files, c.eval.batch_size = "/unused", ("unused.jsonl",), 3
    with pytest.raises(ValueError, match="eval.batch_size: 3 rows do not divide over the 8"):
        evaluate.run(c, "/unused")

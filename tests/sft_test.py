"""Supervised warm start: the loss falls, rows are laid out right, a run resumes."""

import json
import os

import numpy as np
import pytest
import tiny_run_config

from stepgrpo_jax import data, sft, testbed, tokenizer


@pytest.fixture(scope="module")
def testbed_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("testbed"))
    testbed.prepare(out, seed=0, n_train=32, n_eval=8, n_sft=64)
    return out


def _config(testbed_dir, steps):
    c = tiny_run_config.get_config(f"testbed={testbed_dir}")
    c.mode = "sft"
    c.total_steps = steps
    c.data.train_files = (f"{testbed_dir}/sft.jsonl",)
    c.data.response = "response"
    c.sft.batch_size = 8
    c.optim.learning_rate = 3e-3
    c.ckpt.every_steps = 3
    return c


def test_rows_mask_the_response_only(testbed_dir):
    tok = tokenizer.load(f"{testbed_dir}/tokenizer")
    p = data.Problem("What is 1+2?", "3", "x:1", response="<think>\n1+2=3.\n</think>\n\n"
                     "\\boxed{3}<|im_end|>")
    rows = sft.encode_rows(tok, [p], max_len=128, bucket=32)
    prompt = tokenizer.encode_problem(tok, p.problem)
    response = tok.encode(p.response, add_special_tokens=False)
    n = len(prompt) + len(response)
    assert rows["input_ids"].shape[1] % 32 == 0
    assert rows["input_ids"][0, :n].tolist() == prompt + response  # EOS already present.
    assert rows["loss_mask"][0].tolist() == [0] * len(prompt) + [1] * len(response) + [0] * (
        rows["input_ids"].shape[1] - n)
    with pytest.raises(ValueError, match="exceed sft.max_seq_len=16"):
        sft.encode_rows(tok, [p], max_len=16)


@pytest.mark.slow
def test_loss_falls_and_a_run_resumes(testbed_dir, tmp_path):
    workdir = str(tmp_path / "sft")
    sft.train(_config(testbed_dir, 6), workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    losses = [m["loss"] for m in lines]
    assert [m["step"] for m in lines] == list(range(1, 7))
    assert np.mean(losses[-2:]) < losses[0] - 0.5, losses
    # Two more steps continue from step 6, not from scratch.
    sft.train(_config(testbed_dir, 8), workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == list(range(1, 9))

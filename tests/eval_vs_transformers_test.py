"""tools/eval_vs_transformers.py: transformers' side of a greedy evaluation."""

import json
import types

import fixtures
import pytest
import torch
from tiny_models import tiny_hf_model

tool = fixtures.load_tool("eval_vs_transformers")


def test_batched_left_padded_generate_equals_one_prompt_at_a_time_cut_after_the_stop():
    hf_model = tiny_hf_model(0, "qwen2")
    tok = types.SimpleNamespace(pad_token_id=0)
    prompts = [[5, 9, 17, 3, 40, 41], [7, 8], [100, 3, 3]]
    free = [hf_model.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False,
                              eos_token_id=None, pad_token_id=0)[0, len(p):].tolist()
            for p in prompts]
    stop = free[0][4]  # A token the first row emits: it ends there, that token kept.
    out = tool.generate(hf_model, tok, prompts, 12, (stop,), batch=2)
    for row, full in zip(out, free, strict=True):
        cut = full[:full.index(stop) + 1] if stop in full else full
        assert row == cut
    assert out[0] == free[0][:free[0].index(stop) + 1] and len(out[0]) <= 5


@pytest.mark.parametrize("change,message", [
    (dict(temperature=0.6), "expected a greedy evaluation"),
    (dict(num_samples=4), "expected num_samples=1"),
])
def test_only_a_greedy_single_sample_evaluation_is_compared(tmp_path, change, message):
    config = {"mode": "eval", "eval": {"temperature": 0.0, "num_samples": 1, "out": "",
                                       "exit_after_first_step": False, **change}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "eval.json").write_text(json.dumps({"benchmarks": {}}))
    with pytest.raises(ValueError, match=message):
        tool.load_run(str(tmp_path))

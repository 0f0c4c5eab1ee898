"""configs/default.py and the dataclasses it fills agree: same names, same defaults."""

import dataclasses

import pytest

from configs import default
from stepgrpo_jax import data, grpo, rewards, sampling

CONFIG = default.get_config()


@pytest.mark.parametrize("cls, section", [
    (grpo.LossConfig, "grpo"), (sampling.DTRConfig, "dtr"), (sampling.SamplerConfig, "sampling"),
    (data.FieldMap, "data"), (rewards.RewardConfig, "reward")])
def test_config_defaults_are_the_dataclass_defaults(cls, section):
    shared = [f for f in dataclasses.fields(cls) if f.name in CONFIG[section]]
    assert shared, f"no field of {cls.__name__} in config.{section}"
    for f in shared:
        if f.default is not dataclasses.MISSING:
            assert CONFIG[section][f.name] == f.default, f"config.{section}.{f.name}"


def test_from_config_reads_every_field():
    loss = grpo.LossConfig.from_config(CONFIG)
    assert loss.max_response_len == CONFIG.sampling.max_new_tokens
    assert dataclasses.replace(loss, max_response_len=None) == grpo.LossConfig()
    c = default.get_config()
    c.data.problem, c.data.response = "prompt.0.content", "response"
    assert data.FieldMap.from_config(c.data) == data.FieldMap("prompt.0.content", "answer",
                                                              "plain", "response")


def test_sampler_configs_from_config(qwen3_tokenizer_dir):
    from stepgrpo_jax import tokenizer

    tok = tokenizer.load(qwen3_tokenizer_dir)
    tok.eos_token = "<|endoftext|>"  # As Qwen3 base checkpoints declare it.
    c = default.get_config()
    c.dtr.exit_margin, c.sampling.prompt_buckets = 7, [64, 128]
    rollout = sampling.SamplerConfig.from_config(c, tok)
    # ChatML rollouts stop at <|im_end|> whatever the tokenizer's EOS.
    assert rollout.eos_ids == (151643, 151645) and rollout.think_end_id == 151668
    assert rollout.dtr.exit_margin == 7 and rollout.prompt_buckets == (64, 128)
    assert rollout.dtr.probe_ids == tuple(tok.encode(c.dtr.probe_prompt,
                                                     add_special_tokens=False))
    evaluation = sampling.SamplerConfig.from_config(c, tok, evaluation=True)
    assert evaluation.dtr is None and evaluation.eos_ids == rollout.eos_ids
    assert (evaluation.temperature, evaluation.top_p, evaluation.top_k) == (0.6, 0.95, 20)

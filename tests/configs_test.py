"""The experiment configs: every setup builds, the argument parser is strict and typed."""

import pytest

from configs import common, step_grpo
from stepgrpo_jax import model


@pytest.mark.parametrize("size,platform", sorted(step_grpo.SETUPS))
def test_every_setup_builds_with_the_papers_shapes(size, platform):
    c = step_grpo.get_config(f"size={size},platform={platform}")
    setup = step_grpo.SETUPS[size, platform]
    assert model.preset(c.model.preset).num_layers > 0
    assert tuple(c.mesh.shape) == setup.mesh
    assert c.sampling.batch_size == setup.rollout_rows
    assert c.grpo.num_microbatches == setup.microbatches
    assert c.mesh.rules.to_dict() == setup.rules
    assert (c.grpo.prompts_per_step, c.grpo.group_size, c.sampling.max_new_tokens) == \
        (512, 5, 16384)
    assert max(c.sampling.prompt_buckets) == 2048
    rows = c.grpo.prompts_per_step * c.grpo.group_size // c.grpo.num_minibatches
    assert rows % c.grpo.num_microbatches == 0  # Micro-batches split the mini-batch evenly.


@pytest.mark.parametrize("method,kind,dtr", [("step_grpo", "step_grpo", True),
                                             ("grpo", "grpo", False),
                                             ("grpo_lp", "grpo_lp", False)])
def test_methods_set_the_reward_and_dtr(method, kind, dtr):
    c = step_grpo.get_config(f"size=4b,platform=gpu8,method={method}")
    assert (c.reward.kind, c.dtr.enabled) == (kind, dtr)


def test_runlocal_shrinks_to_a_cpu_run():
    full, local = step_grpo.get_config("size=8b"), step_grpo.get_config("size=8b,runlocal")
    cfg = model.preset(local.model.preset, **dict(local.model.overrides))
    assert cfg.vocab_size == model.preset(full.model.preset).vocab_size  # Real tokenizers work.
    assert model.num_params(cfg) < model.num_params(model.preset("qwen3-0.6b")) / 10
    assert local.sampling.max_new_tokens < full.sampling.max_new_tokens / 100
    assert local.grpo.prompts_per_step * local.grpo.group_size % local.sampling.batch_size == 0
    rows = local.grpo.prompts_per_step * local.grpo.group_size // local.grpo.num_minibatches
    logits = rows * local.grpo.chunk_size * cfg.vocab_size * 4  # A chunk's float32 logits.
    assert logits < 1e9


def test_cpu_real_trains_gsm8k_from_the_prepared_folder_within_memory():
    c = step_grpo.get_config("method=grpo,cpu_real,dir=/data/bench")
    assert tuple(c.data.train_files) == ("/data/bench/gsm8k_train.jsonl",)
    assert (c.data.problem, c.data.answer, c.data.answer_format) == ("problem", "answer", "plain")
    assert (c.reward.kind, c.dtr.enabled, c.model.dtype) == ("grpo", False, "float32")
    rows = c.grpo.prompts_per_step * c.grpo.group_size
    assert rows % c.sampling.batch_size == 0
    micro = rows // c.grpo.num_minibatches // c.grpo.num_microbatches
    assert micro * c.grpo.chunk_size * 151_936 * 4 < 0.5e9  # Qwen's vocabulary, float32 logits.
    assert c.grpo.kl_coef == 0  # No reference model: 2.5 GB less for a 0.5B model.
    assert c.ckpt.every_steps == c.total_steps  # The run ends with a checkpoint to export.


@pytest.mark.parametrize("arg,message", [
    ("runlocal,cpu_real", "runlocal and cpu_real are two different CPU runs"),
    ("sise=8b", "argument 'sise' in 'sise=8b' is unknown; valid arguments: size=1.7b|4b|8b|32b"),
    ("size=9b", "size='9b' in 'size=9b'; expected one of ['1.7b', '4b', '8b', '32b']"),
    ("method=ppo", "method='ppo'"),
    ("runlocal=maybe", "got 'maybe', expected a bare flag or true/false"),
    ("size", "got None, expected a value of type str"),
    ("size=32b,platform=gpu8", "size=32b has no setup for platform=gpu8; it has one for"),
])
def test_bad_arguments_fail_naming_the_valid_ones(arg, message):
    with pytest.raises(ValueError, match="configs/step_grpo.py") as e:
        step_grpo.get_config(arg)
    assert message in str(e.value)


def test_parse_arg_types_values_like_their_defaults():
    arg = common.parse_arg("n=3,lr=0.5,name=x,flag,other=false", n=1, lr=1.0, name="",
                           flag=False, other=True)
    assert (arg.n, arg.lr, arg.name, arg.flag, arg.other) == (3, 0.5, "x", True, False)
    with pytest.raises(ValueError, match="'n=three': got 'three', expected a value of type int"):
        common.parse_arg("n=three", n=1)

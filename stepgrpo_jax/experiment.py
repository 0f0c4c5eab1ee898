"""Builds a run's objects from its config: mesh, model, tokenizer, data, sampler, loss and
optimiser. Shared by training, supervised warm start and evaluation."""

from __future__ import annotations

import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from stepgrpo_jax import checkpoint, data, grpo, model, parallel, sampling, tokenizer
from stepgrpo_jax.metrics import MetricsWriter


def build_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    return parallel.make_mesh(tuple(config.mesh.shape))


def mesh_rules(config: ml_collections.ConfigDict) -> dict[str, tuple[str, ...]]:
    return {k: tuple(v) for k, v in config.mesh.rules.items()}


def load_initial_model(config: ml_collections.ConfigDict, mesh, rules
                       ) -> tuple[model.ModelConfig, model.Params | None]:
    """The starting model: `config.model_dir` (HF or ours), else the preset (params None:
    random init happens born-sharded in the train state)."""
    numerics = dict(dtype=config.model.dtype, param_dtype=config.model.param_dtype,
                    remat=config.model.remat, attention_block=config.model.attention_block)
    if config.model_dir:
        cfg, params = checkpoint.load_model(config.model_dir, dtype=config.model.param_dtype,
                                            mesh=mesh, rules=rules)
        return cfg.replace(**numerics), params
    return model.preset(config.model.preset, **dict(config.model.overrides), **numerics), None


def load_tokenizer(config: ml_collections.ConfigDict):
    path = config.tokenizer_dir or config.model_dir
    if not path:
        raise ValueError("config.tokenizer_dir is required when config.model_dir is empty")
    return tokenizer.load(path)


def make_sampler(config: ml_collections.ConfigDict, tok, model_cfg: model.ModelConfig, mesh,
                 *, evaluation: bool = False) -> sampling.Sampler:
    """The compiled sampler of the rollouts or (with `evaluation`) of plain evaluation."""
    tables = sampling.TriggerTables.from_tokenizer(tok, tuple(config.dtr.triggers),
                                                   model_cfg.vocab_size)
    return sampling.Sampler(model_cfg, sampler_config(config, tok, evaluation=evaluation),
                            tables, mesh)


def sampler_config(config: ml_collections.ConfigDict, tok, *, evaluation: bool = False
                   ) -> sampling.SamplerConfig:
    """The rollout sampler (DTR per config), or the evaluation sampler: plain, or with
    `eval.exit_after_first_step` thinking closed at the first step boundary."""
    s = config.eval if evaluation else config.sampling
    dtr = None
    if config.dtr.enabled and not evaluation:
        dtr = sampling.DTRConfig.from_tokenizer(
            tok, probe_prompt=config.dtr.probe_prompt, exit_suffix=config.dtr.exit_suffix,
            threshold=config.dtr.threshold, probe_budget=config.dtr.probe_budget,
            max_probes=config.dtr.max_probes, think_budget_frac=config.dtr.think_budget_frac,
            exit_margin=config.dtr.forced_exit_margin)
    elif evaluation and config.eval.exit_after_first_step:
        # DTR forcing the exit at the first step boundary: a threshold below any confidence
        # (confidences lie in [0, 1]) makes the first probe exit, after one probe token. No
        # thinking budget: a response with no trigger runs as in plain sampling.
        dtr = sampling.DTRConfig.from_tokenizer(
            tok, probe_prompt=config.dtr.probe_prompt, exit_suffix=config.dtr.exit_suffix,
            threshold=-1.0, probe_budget=1, max_probes=1, think_budget_frac=1.0)
    return sampling.SamplerConfig(
        max_new_tokens=s.max_new_tokens, prompt_buckets=tuple(config.sampling.prompt_buckets),
        temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
        cache_dtype=config.sampling.cache_dtype, eos_ids=stop_ids(tok),
        think_end_id=tok.convert_tokens_to_ids("</think>"), pad_id=tok.pad_token_id, dtr=dtr)


def stop_ids(tok) -> tuple[int, ...]:
    """End-of-sequence ids: the tokenizer's EOS and, as Qwen3's generation config has it,
    `<|endoftext|>` when the vocabulary has one."""
    ids = [tok.eos_token_id]
    endoftext = tok.convert_tokens_to_ids("<|endoftext|>")
    if endoftext is not None and endoftext != tok.unk_token_id and endoftext not in ids:
        ids.append(endoftext)
    return tuple(ids)


def loss_config(config: ml_collections.ConfigDict) -> grpo.LossConfig:
    g = config.grpo
    return grpo.LossConfig(eps_low=g.eps_low, eps_high=g.eps_high, dual_clip=g.dual_clip,
                           logratio_clip=g.logratio_clip, kl_coef=g.kl_coef,
                           kl_estimator=g.kl_estimator, loss_agg=g.loss_agg,
                           max_response_len=config.sampling.max_new_tokens)


def make_optimizer(config: ml_collections.ConfigDict):
    o = config.optim
    return grpo.make_optimizer(o.learning_rate, o.weight_decay, o.grad_clip, o.schedule,
                               o.warmup_steps, config.total_steps * config.grpo.num_minibatches)


def per_host(total: int, what: str) -> int:
    n = jax.process_count()
    if total % n:
        raise ValueError(f"{what}={total} does not divide over {n} processes")
    return total // n


def padded_length(longest: int, bucket: int, limit: int) -> int:
    """Columns of a batch whose longest row has `longest` tokens: rounded up to a multiple of
    `bucket` (few shapes to compile), at most `limit`; `bucket` 0 always gives `limit`."""
    if bucket <= 0:
        return limit
    return min(max(-(-longest // bucket), 1) * bucket, limit)


def check_batch_divides(rows: int, mesh, what: str) -> None:
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if rows % shards:
        raise ValueError(f"{what}: {rows} rows do not divide over the {shards} batch shards of "
                         f"mesh {dict(mesh.shape)} (data x fsdp)")




def field_map(config: ml_collections.ConfigDict) -> data.FieldMap:
    return data.FieldMap(config.data.problem_field, config.data.answer_field,
                         config.data.answer_format, config.data.response_field)


def load_problem_files(config: ml_collections.ConfigDict, files):
    """(source, skipped rows) of problem files, with the config's field mapping."""
    return data.load_problems(as_list(files), field_map(config), config.data.skip_malformed,
                              config.data.cache_dir or None)


def as_list(files) -> list[str]:
    """Files as a tuple/list or a comma-separated string (as a command-line override gives)."""
    if isinstance(files, str):
        return [f for f in files.split(",") if f]
    return list(files)


class Resumed(NamedTuple):
    """What a training loop starts from: its checkpoints, state, first step, data, metrics."""

    ckpt: checkpoint.Checkpoints
    state: grpo.TrainState
    start: int
    stream: data.PromptStream
    writer: MetricsWriter


def resume(config: ml_collections.ConfigDict, workdir: str, state: grpo.TrainState, mesh,
           optimizer, model_cfg: model.ModelConfig, source) -> Resumed:
    """Opens the run's checkpoints and restores the latest (else keeps the fresh `state`),
    the data stream at its saved position, and the metrics file cut back to that step."""
    ckpt = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints"), config.ckpt.max_to_keep,
                                  config.ckpt.async_save)
    state, start, position = restore_train_state(ckpt, state, mesh, optimizer, model_cfg)
    stream = data.PromptStream(source, config.seed, config.data.shuffle, position)
    writer = MetricsWriter(workdir, config.log.tensorboard)
    writer.truncate_after(start)
    return Resumed(ckpt, state, start, stream, writer)


def restore_train_state(ckpt: checkpoint.Checkpoints, state: grpo.TrainState, mesh,
                        optimizer, model_cfg: model.ModelConfig
                        ) -> tuple[grpo.TrainState, int, int]:
    """(state, first step, this host's data position) from the latest checkpoint of the run;
    without one, the given fresh state at step 0."""
    if ckpt.latest_step() is None:
        return state, 0, 0
    shardings = grpo.state_shardings(model_cfg, optimizer, mesh)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            state, shardings)
    params, opt_state, meta = ckpt.restore(None, abstract.params, abstract.opt_state)
    logging.info("resumed from %s at step %d", ckpt.directory, meta["step"])
    state = grpo.TrainState(params, opt_state, jnp.asarray(meta["updates"], jnp.int32))
    return state, meta["step"], meta["data_position"][jax.process_index()]


def save_train_state(ckpt: checkpoint.Checkpoints, step: int, state: grpo.TrainState,
                     model_cfg: model.ModelConfig, data_position: int, seed: int) -> None:
    """Params, optimizer state and what resuming needs: step, every host's data position."""
    positions = [data_position]
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        positions = multihost_utils.process_allgather(np.int64(data_position)).tolist()
    meta = {"step": step, "updates": int(state.step), "seed": seed,
            "model_config": checkpoint.config_to_json(model_cfg), "data_position": positions}
    ckpt.save(step, state.params, meta, state.opt_state, force=True)

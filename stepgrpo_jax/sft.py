"""Supervised warm start: next-token loss on the response part of (problem, response) rows.

Same mesh, train state, checkpoints and metrics as GRPO training; rows come from
`config.data.train_files` with `config.data.response` naming the response field.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from stepgrpo_jax import checkpoint, data, model, parallel, tokenizer, train_state, trainer
from stepgrpo_jax.metrics import MetricsWriter
from stepgrpo_jax.model import ModelConfig, Params


def sft_loss(model_cfg: ModelConfig, params: Params, batch: train_state.Batch,
             chunk_size: int) -> jax.Array:
    """Mean negative log-likelihood of the loss-masked tokens."""
    logp, _ = model.token_logprobs(model_cfg, params, batch["input_ids"],
                                   batch["attention_mask"], chunk_size)
    mask = batch["loss_mask"]
    return -jnp.sum(logp * mask) / jnp.maximum(mask.sum(), 1.0)


def sft_grads(model_cfg: ModelConfig, params: Params, batch: train_state.Batch,
              chunk_size: int) -> tuple[Params, train_state.Metrics]:
    """The gradient of `sft_loss`, and the loss (the gradient function of a train step)."""
    loss, grads = jax.value_and_grad(sft_loss, argnums=1)(model_cfg, params, batch, chunk_size)
    return grads, {"loss": loss}


def encode_rows(tok, problems: list[data.Problem], max_len: int, bucket: int = 64
                ) -> dict[str, np.ndarray]:
    """Chat prompt + response (+ EOS unless present), right-padded to the longest row of all
    hosts rounded up to `bucket` (few shapes to compile, little padding); the loss covers the
    response tokens."""
    rows = []
    for p in problems:
        prompt = tokenizer.encode_problem(tok, p.problem)
        response = tok.encode(p.response, add_special_tokens=False)
        if not response or response[-1] != tok.eos_token_id:
            response.append(tok.eos_token_id)
        if len(prompt) + len(response) > max_len:
            raise ValueError(f"{p.source}: {len(prompt) + len(response)} tokens exceed "
                             f"sft.max_seq_len={max_len}")
        rows.append((prompt, response))
    T = trainer.padded_length(parallel.process_max(max(len(p) + len(r) for p, r in rows)),
                                 bucket, max_len)
    ids = np.full((len(rows), T), tok.pad_token_id, np.int32)
    attention = np.zeros((len(rows), T), bool)
    loss_mask = np.zeros((len(rows), T), np.float32)
    for i, (prompt, response) in enumerate(rows):
        n = len(prompt) + len(response)
        ids[i, :n] = prompt + response
        attention[i, :n] = True
        loss_mask[i, len(prompt):n] = 1.0
    return {"input_ids": ids, "attention_mask": attention, "loss_mask": loss_mask}


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains `config.total_steps` steps of `config.sft.batch_size` rows; resumes from workdir.

    Returns what `trainer.train` returns; `step` < `config.total_steps` means preempted.
    """
    # ---- mesh, model, tokenizer, data
    mesh = parallel.make_mesh(config.mesh.shape)
    tok = tokenizer.load(config.tokenizer_dir or config.model_dir)
    model_cfg, init_params = checkpoint.initial_model(config, mesh)
    rows_per_host = parallel.per_host(config.sft.batch_size, "sft.batch_size")
    parallel.check_batch_divides(config.sft.batch_size, mesh, "sft.batch_size")
    if not config.data.response:
        raise ValueError("mode=sft needs config.data.response (the field of the response to "
                         "learn)")
    source, skipped = data.load_from_config(config.data, config.data.train_files)

    # ---- state, step function
    optimizer = train_state.optimizer_from_config(config.optim, config.total_steps)
    rng = jax.random.key(config.seed)
    state = train_state.init_train_state(model_cfg, optimizer, mesh,
                                         rng=jax.random.fold_in(rng, 0), params=init_params)
    # The state holds a copy: the loaded weights would otherwise stay alive for the whole run
    # (a model's size: 2.5 GB for a 0.5B float32 model).
    del init_params
    step_fn = train_state.make_train_step(
        functools.partial(sft_grads, model_cfg, chunk_size=config.grpo.chunk_size),
        model_cfg, optimizer, mesh)

    # ---- restore, in this order: the workdir's latest checkpoint (a restarted run), else the
    # initial model (config.model_dir), else the random init.
    ckpt = checkpoint.Checkpoints.from_config(config.ckpt, workdir)
    state, start, position = checkpoint.restore_train_state(ckpt, state, model_cfg)
    done = start  # The last step trained; below total_steps when preempted.
    stream = data.PromptStream(source, config.seed, config.data.shuffle, position)
    writer = MetricsWriter(workdir, config.log.tensorboard)
    writer.truncate_after(start)  # A resumed run rewrites the steps it repeats.

    # ---- loop
    last: dict[str, Any] = {}
    bar = tqdm(range(start, config.total_steps), initial=start, total=config.total_steps,
               disable=jax.process_index() != 0, desc="sft")
    # As in trainer.py: device -> host copies in the loop are explicit.
    with (
        checkpoint.training_run(ckpt, writer) as preemption,
        jax.transfer_guard_device_to_host("disallow"),
    ):
        for step in bar:
            t0 = time.perf_counter()
            local = encode_rows(tok, stream.take(rows_per_host), config.sft.max_seq_len)
            state, m = step_fn(state, parallel.host_to_global(local, mesh))
            done = step + 1
            if step % config.log.every_steps == 0 or done == config.total_steps:
                m = {k: float(v) for k, v in jax.device_get(m).items()}
                tokens = parallel.process_sum(float(local["loss_mask"].sum()))
                m.update(tokens_per_second=tokens / (time.perf_counter() - t0),
                         data_skipped_rows=len(skipped))
                last = writer.write(done, m)
                bar.set_postfix(loss=f"{m['loss']:.4f}")
            if checkpoint.save_if_due(ckpt, preemption, done, config, state, model_cfg,
                                      stream.position):
                break  # Preempted: saved, and every process stops here.
    return {"state": state, "model_config": model_cfg, "last_metrics": last, "step": done}

"""The training loop: rollout -> rewards -> advantages -> K updates -> metrics -> checkpoint.

Reads top to bottom in phases: mesh, model and tokenizer, data, state, step functions,
restore, loop. Supervised warm start (`mode="sft"`) has its own loop in `sft.py`.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from stepgrpo_jax import (
    checkpoint,
    data,
    evaluate,
    grading,
    grpo,
    parallel,
    rewards,
    sampling,
    tokenizer,
    train_state,
)
from stepgrpo_jax.metrics import MetricsWriter

# ----------------------------------------------------------------------------------- batches


def padded_length(longest: int, bucket: int, limit: int) -> int:
    """Columns of a batch whose longest row has `longest` tokens: rounded up to a multiple of
    `bucket` (few shapes to compile), at most `limit`; `bucket` 0 always gives `limit`."""
    if bucket <= 0:
        return limit
    return min(max(-(-longest // bucket), 1) * bucket, limit)


def build_batch(prompts: list[list[int]], completions: list[np.ndarray],
                train_mask: list[np.ndarray], advantages: np.ndarray, prompt_len: int,
                response_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """The grpo.Batch rows: prompt left-padded to `prompt_len`, completion right-padded."""
    B, T = len(prompts), prompt_len + response_len
    ids = np.full((B, T), pad_id, np.int32)
    attention = np.zeros((B, T), bool)
    loss_mask = np.zeros((B, T), np.float32)
    for i, (p, c, m) in enumerate(zip(prompts, completions, train_mask, strict=True)):
        ids[i, prompt_len - len(p):prompt_len] = p
        ids[i, prompt_len:prompt_len + len(c)] = c
        attention[i, prompt_len - len(p):prompt_len + len(c)] = True
        loss_mask[i, prompt_len:prompt_len + len(c)] = m
    return {"input_ids": ids, "attention_mask": attention, "loss_mask": loss_mask,
            "advantages": np.asarray(advantages, np.float32)}


# ----------------------------------------------------------------------------------- rollout


def rollout_metrics(out: sampling.SampleOutput, info: dict[str, Any], scores: np.ndarray,
                    group_size: int) -> dict[str, float]:
    reasons = np.asarray(out.exit_reasons)
    m = {
        "reward_mean": float(scores.mean()),
        "acc_mean": float(np.mean(info["correct"])),
        "fmt_mean": float(np.mean(info["formatted"])),
        "response_tokens_mean": float(np.mean(out.lengths)),
        "steps_mean": float(np.mean(info["steps"])),
        "probes_mean": float(np.mean(out.num_probes)),
        "frac_reward_zero_std": float(np.mean(grpo.equal_reward_groups(scores, group_size))),
    }
    for i, name in enumerate(sampling.EXIT_REASONS):
        m[f"exit_frac_{name}"] = float(np.mean(reasons == i))
    return m


def update_metrics(per_minibatch: list[dict[str, jax.Array]]) -> dict[str, float]:
    """Means over the K mini-batches (fetched from the devices here, once per step)."""
    fetched = jax.device_get(per_minibatch)
    keys = fetched[0].keys()
    out = {k: float(np.mean([m[k] for m in fetched])) for k in keys}
    out["skipped"] = float(sum(m["skipped"] for m in fetched))
    return out


# ----------------------------------------------------------------------------------- the loop


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs GRPO training to `config.total_steps`, resuming from `workdir`.

    Returns the final `state`, `model_config`, `last_metrics` and `step`, the last step trained:
    below `config.total_steps` when the run was preempted (saved, to be resumed).
    """
    _check_workdir(workdir)
    # ---- mesh, model, tokenizer
    mesh = parallel.make_mesh(config.mesh.shape)
    tok = tokenizer.load(config.tokenizer_dir or config.model_dir)
    model_cfg, init_params = checkpoint.initial_model(config, mesh)
    G = config.grpo.group_size
    prompts_per_host = parallel.per_host(config.grpo.prompts_per_step, "grpo.prompts_per_step")
    rows_per_step = config.grpo.prompts_per_step * G
    parallel.check_batch_divides(rows_per_step // config.grpo.num_minibatches, mesh,
                                 "grpo.prompts_per_step x group_size / num_minibatches")
    parallel.check_batch_divides(config.sampling.batch_size * jax.process_count(), mesh,
                                 "sampling.batch_size (decode rows per host)")

    # ---- data
    # A prompt longer than the largest bucket is a malformed row, found now, not at a rollout.
    lengths = functools.partial(tokenizer.problem_prompt_lengths, tok)
    longest = max(config.sampling.prompt_buckets)
    source, skipped_rows = data.load_from_config(config.data, config.data.train_files, lengths,
                                                 longest)
    eval_problems = []
    if data.as_list(config.eval.files):
        eval_source, _ = data.load_from_config(config.data, config.eval.files, lengths, longest)
        eval_problems = [eval_source[i] for i in range(len(eval_source))]
        eval_problems = evaluate.host_share(eval_problems[:config.eval.max_problems or None])
        parallel.check_batch_divides(config.eval.batch_size, mesh, "eval.batch_size")

    # ---- state (born sharded), step functions
    # Schedules count optimiser updates: num_minibatches per rollout step.
    optimizer = train_state.optimizer_from_config(
        config.optim, config.total_steps * config.grpo.num_minibatches)
    rng = jax.random.key(config.seed)
    state = train_state.init_train_state(model_cfg, optimizer, mesh,
                                         rng=jax.random.fold_in(rng, 0), params=init_params)
    # The state holds a copy: the loaded weights would otherwise stay alive for the whole run
    # (a model's size: 2.5 GB for a 0.5B float32 model).
    del init_params
    loss_cfg = grpo.LossConfig.from_config(config)
    ref_params = None
    if loss_cfg.kl_coef > 0:  # The frozen initial model; a copy, since the state is donated.
        ref_params = jax.tree.map(jnp.copy, state.params)
    update = grpo.make_update_step(model_cfg, loss_cfg, optimizer, mesh,
                                   num_microbatches=config.grpo.num_microbatches,
                                   chunk_size=config.grpo.chunk_size)
    # Old and reference log-probs of a whole rollout, in pieces the size of one update's.
    logprobs = train_state.make_compute_logprobs(
        model_cfg, mesh, chunk_size=config.grpo.chunk_size,
        num_microbatches=config.grpo.num_minibatches * config.grpo.num_microbatches)
    triggers = tuple(config.dtr.triggers)
    tables = sampling.TriggerTables.from_tokenizer(tok, triggers, model_cfg.vocab_size)
    sampler = sampling.make_sampler(config.sampling.engine, model_cfg,
                            sampling.SamplerConfig.from_config(config, tok), tables,
                            config.sampling.batch_size, mesh)
    eval_sampler = None
    if eval_problems:
        eval_sampler = sampling.make_sampler(
            config.sampling.engine, model_cfg,
            sampling.SamplerConfig.from_config(config, tok, evaluation=True), tables,
            config.eval.batch_size, mesh)

    # ---- restore, in this order: the workdir's latest checkpoint (a restarted run), else the
    # initial model of `checkpoint.initial_model` above (config.model_dir: HF weights or a
    # checkpoint of ours), else the random init. The KL reference stays the initial model.
    ckpt = checkpoint.Checkpoints.from_config(config.ckpt, workdir)
    state, start, position = checkpoint.restore_train_state(ckpt, state, model_cfg)
    done = start  # The last step trained; below total_steps when preempted.
    stream = data.PromptStream(source, config.seed, config.data.shuffle, position)
    writer = MetricsWriter(workdir, config.log.tensorboard)
    writer.truncate_after(start)  # A resumed run rewrites the steps it repeats.

    # ---- loop
    grader = grading.Grader(rewards.RewardConfig.from_config(config))
    bar = tqdm(range(start, config.total_steps), initial=start, total=config.total_steps,
               disable=jax.process_index() != 0, desc=f"{config.reward.kind}")
    skipped_in_row, last = 0, {}
    rollout_rng, eval_rng = jax.random.fold_in(rng, 1), jax.random.fold_in(rng, 2)
    # In the loop every device -> host copy is explicit (device_get): an implicit one, such as
    # np.asarray or float() of a device value, would stall the step unseen, so it is an error.
    # Host -> device is not guarded: jax counts building multi-process global arrays from host
    # rows (make_array_from_process_local_data) as implicit.
    with (
        checkpoint.training_run(ckpt, writer, grader) as preemption,
        jax.transfer_guard_device_to_host("disallow"),
    ):
        for step in bar:
            done = step + 1
            t0 = time.perf_counter()
            problems = stream.take(prompts_per_host)
            batch, m = rollout(config, sampler, tok, state.params, problems, grader,
                               jax.random.fold_in(rollout_rng, jax.device_put(step)))
            t1 = time.perf_counter()
            state, per_minibatch = grpo.train_on_rollout(
                update, logprobs, state, parallel.host_to_global(batch, mesh),
                config.grpo.num_minibatches, ref_params)
            m.update(update_metrics(per_minibatch))  # Fetching them waits for the updates.
            m.update(rollout_seconds=t1 - t0, update_seconds=time.perf_counter() - t1,
                     tokens_per_second=m.pop("generated_tokens") / max(t1 - t0, 1e-9),
                     data_skipped_rows=len(skipped_rows))
            every = config.eval.every_steps
            if eval_sampler and ((every and done % every == 0) or done == config.total_steps):
                result = evaluate.evaluate_problems(
                    eval_sampler, state.params, tok, eval_problems, config.eval.num_samples,
                    grader, eval_rng, triggers)
                m.update({f"eval_{k}": v for k, v in result.items() if k != "records"})
            if step % config.log.every_steps == 0 or done == config.total_steps:
                last = writer.write(done, m)
                bar.set_postfix(reward=f"{m['reward_mean']:.3f}", acc=f"{m['acc_mean']:.2f}",
                                tokens=f"{m['response_tokens_mean']:.0f}")
            skipped_in_row = skipped_in_row + 1 if m["skipped"] else 0
            if skipped_in_row >= config.optim.max_skipped:
                raise FloatingPointError(f"{skipped_in_row} non-finite updates in a row at "
                                         f"step {done}; last metrics: {m}")
            if checkpoint.save_if_due(ckpt, preemption, done, config, state, model_cfg,
                                      stream.position):
                break  # Preempted: saved, and every process stops here.
    return {"state": state, "model_config": model_cfg, "last_metrics": last, "step": done}


def rollout(config: ml_collections.ConfigDict, sampler: sampling.Engine | sampling.Sampler,
            tok, params, problems: list[data.Problem], grader: grading.Grader, rng: jax.Array
            ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Samples G completions per problem, scores them and lays out this host's batch rows."""
    G, scfg = config.grpo.group_size, sampler.scfg
    prompts = [tokenizer.encode_problem(tok, p.problem) for p in problems]
    prompt_ids = [ids for ids in prompts for _ in range(G)]
    out = sampler.rollout(params, prompts, G, rng)
    completions = [out.tokens[i, :n] for i, n in enumerate(out.lengths)]
    texts = tok.batch_decode(completions, skip_special_tokens=False)
    reward_cfg = rewards.RewardConfig.from_config(config)
    scores, info = rewards.score_completions(
        texts, [p.answer for p in problems], out.lengths, G, reward_cfg, grader,
        tuple(config.dtr.triggers))
    adv = grpo.group_advantages(scores, G, config.grpo.adv_scale)
    train_mask = [1.0 - out.forced[i, :n] if config.dtr.mask_forced else np.ones(n)
                  for i, n in enumerate(out.lengths)]
    prompt_len = scfg.bucket(parallel.process_max(max(map(len, prompt_ids))))
    # Responses pad to the step's longest, bucketed: no columns that are all padding.
    response_len = padded_length(parallel.process_max(int(out.lengths.max())),
                                 config.grpo.response_bucket, scfg.max_new_tokens)
    batch = build_batch(prompt_ids, completions, train_mask, adv, prompt_len, response_len,
                        tok.pad_token_id)
    m = parallel.process_mean(rollout_metrics(out, info, scores, G), len(completions))
    generated = parallel.process_sum(np.sum(out.lengths))
    m.update(generated_tokens=generated,
             grader_timeouts=parallel.process_sum(info["grader_timeouts"]),
             rollout_occupancy=generated / max(parallel.process_sum(out.row_steps), 1),
             rollout_decode_steps=out.num_steps,
             prefill_tokens=parallel.process_sum(out.prefill_tokens))
    return batch, m


def _check_workdir(workdir: str) -> None:
    """Fails early, naming the path, when the workdir cannot be written."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test.{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise OSError(f"workdir {workdir} is not writable: {e}") from e


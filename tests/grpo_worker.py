"""A tiny GRPO problem shared by the GRPO tests, and the worker of grpo_multiprocess_test.

As a script: `python tests/grpo_worker.py PROCESS_ID NUM_PROCESSES PORT OUT.npz` joins a
`jax.distributed` job on 127.0.0.1:PORT, runs `rollout_step` on a mesh over every process's
devices, and process 0 writes the results to OUT.npz.
"""

from __future__ import annotations

import sys

import jax
import numpy as np
from jax.experimental import multihost_utils

from stepgrpo_jax import grpo, model, parallel, train_state

TINY = model.ModelConfig(vocab_size=64, embed_dim=32, mlp_dim=64, num_layers=2, num_heads=4,
                         num_kv_heads=2, head_dim=8, bos_token_id=None, eos_token_id=None)


def tiny_params(seed: int = 0, cfg: model.ModelConfig = TINY) -> model.Params:
    """Random params drawn with NumPy: host arrays that every process and mesh of a test gets
    identically, without compiling `model.init_params` for each."""
    rng = np.random.RandomState(seed)
    return jax.tree.map(
        lambda s: (np.ones(s.shape) if s.init == "ones" else 0.02 * rng.randn(*s.shape)
                   ).astype(cfg.param_dtype),
        model.param_specs(cfg), is_leaf=lambda x: isinstance(x, model.qwen3.ParamSpec))


def make_batch(rows: int, prompt_len: int = 5, completion_len: int = 7, seed: int = 0,
               vocab: int = TINY.vocab_size) -> dict[str, np.ndarray]:
    """A rollout-shaped batch: prompts left-padded, completions right-padded, the last row with
    no completion token; old/ref log-probs near the tiny model's (about -log V) so ratios vary."""
    rng = np.random.RandomState(seed)
    T = prompt_len + completion_len
    pos = np.arange(T)[None]
    p_len = rng.randint(1, prompt_len + 1, (rows, 1))
    c_len = rng.randint(1, completion_len + 1, (rows, 1))
    c_len[-1] = 0
    prompt = (pos < prompt_len) & (pos >= prompt_len - p_len)
    completion = (pos >= prompt_len) & (pos < prompt_len + c_len)
    mask = (prompt | completion)
    loss_mask = completion.astype(np.float32)

    def near_model_logprobs():
        return ((-np.log(vocab) + 0.3 * rng.randn(rows, T)) * loss_mask).astype(np.float32)

    return {
        "input_ids": np.where(mask, rng.randint(3, vocab, (rows, T)), 0).astype(np.int32),
        "attention_mask": mask,
        "loss_mask": loss_mask,
        "advantages": rng.randn(rows).astype(np.float32),
        "old_logprobs": near_model_logprobs(),
        "ref_logprobs": near_model_logprobs(),
    }


def rollout_step(mesh: jax.sharding.Mesh, batch: dict[str, jax.Array]) -> dict[str, np.ndarray]:
    """One rollout step (recomputed old and reference log-probs, 2 mini-batches of 2
    micro-batches each) from `tiny_params()`; losses, grad norms and the new params as NumPy."""
    optimizer = train_state.make_optimizer(learning_rate=1e-3)
    state = train_state.init_train_state(TINY, optimizer, mesh, params=tiny_params())
    ref_params = jax.tree.map(lambda x: x.copy(), state.params)
    update = grpo.make_update_step(TINY, grpo.LossConfig(), optimizer, mesh, num_microbatches=2,
                                   chunk_size=4)
    logprobs = train_state.make_compute_logprobs(TINY, mesh, num_microbatches=2, chunk_size=4)
    state, metrics = grpo.train_on_rollout(update, logprobs, state, batch, num_minibatches=2,
                                           ref_params=ref_params)
    params = multihost_utils.process_allgather(state.params, tiled=True)
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    out = {"params/" + jax.tree_util.keystr(k, simple=True, separator="/"): np.asarray(v)
           for k, v in flat}
    for name in ("loss", "grad_norm", "skipped"):
        out[name] = np.array([float(m[name]) for m in metrics])
    return out


def global_batch(mesh: jax.sharding.Mesh, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """The global batch from each process's own rows, as a multi-host input pipeline would."""
    sharding = train_state.batch_sharding(mesh)

    def one(x):
        rows = [i[0] for i in sharding.addressable_devices_indices_map(x.shape).values()]
        lo, hi = min(r.start or 0 for r in rows), max(r.stop or x.shape[0] for r in rows)
        return jax.make_array_from_process_local_data(sharding, x[lo:hi], x.shape)

    return {k: one(v) for k, v in batch.items()}


def main(process_id: int, num_processes: int, port: int, out_path: str) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                               num_processes=num_processes, process_id=process_id)
    # fsdp spans the processes (params are gathered across them), tensor stays inside one.
    mesh = parallel.make_mesh((1, num_processes, -1))
    batch = make_batch(8, seed=1)
    del batch["old_logprobs"], batch["ref_logprobs"]  # The rollout step recomputes them.
    out = rollout_step(mesh, global_batch(mesh, batch))
    if process_id == 0:
        np.savez(out_path, **out)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])

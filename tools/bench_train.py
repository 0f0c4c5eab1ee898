"""Throughput and MFU of the jitted GRPO update (policy forward + backward, KL reference
forward, AdamW) on random weights, against the device's measured matmul rate.

  python tools/bench_train.py                                   # CPU size
  python tools/bench_train.py --preset qwen3-1.7b --batch 16 --seq 2048 --dtype bfloat16

FLOPs per update: 6 x params x tokens for the policy (forward + backward), 2 x params x tokens
for the reference forward, plus attention (causal: half of the 4·T²·N·H per sequence per layer,
x3 for the policy with backward, x1 for the reference). MFU = those FLOPs / time / peak, where
peak is timed here on a square matmul of the compute dtype.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from stepgrpo_jax import grpo, logs, model, parallel, train_state

PRESET = flags.DEFINE_string("preset", "", "Qwen3 preset (e.g. qwen3-1.7b); empty: a CPU size.")
BATCH = flags.DEFINE_integer("batch", 8, "Sequences per update.")
SEQ = flags.DEFINE_integer("seq", 256, "Tokens per sequence (prompt + response).")
DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
REMAT = flags.DEFINE_enum("remat", "full", ["none", "full", "dots", "dots_no_batch"], "Remat.")
MICRO = flags.DEFINE_integer("microbatches", 1, "Gradient-accumulation micro-batches.")
STEPS = flags.DEFINE_integer("steps", 3, "Timed updates (after one warm-up).")
MESH = flags.DEFINE_list("mesh", ["1", "-1", "1"], "Mesh shape (data, fsdp, tensor).")

CPU_SIZE = dict(vocab_size=4096, embed_dim=256, mlp_dim=768, num_layers=4, num_heads=4,
                num_kv_heads=2, head_dim=64)


def matmul_peak(dtype: str, n: int) -> float:
    """Measured FLOP/s of an n x n x n matmul in `dtype` (the device's practical peak)."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(5):
        out = f(a)
    out.block_until_ready()
    return 5 * 2 * n**3 / (time.perf_counter() - t)


def update_flops(cfg: model.ModelConfig, batch: int, seq: int) -> float:
    n = model.num_params(cfg)
    tokens = batch * seq
    attention = 2 * seq * seq * cfg.num_heads * cfg.head_dim * cfg.num_layers * batch
    return (6 + 2) * n * tokens + (3 + 1) * attention


def main(argv):
    del argv
    logs.quiet_logs()
    numerics = dict(dtype=DTYPE.value, param_dtype="float32", remat=REMAT.value)
    cfg = (model.preset(PRESET.value, **numerics) if PRESET.value
           else model.ModelConfig(**CPU_SIZE, **numerics))
    mesh = parallel.make_mesh(tuple(int(x) for x in MESH.value))
    optimizer = train_state.make_optimizer(1e-6)
    state = train_state.init_train_state(cfg, optimizer, mesh, rng=jax.random.key(0))
    ref = jax.tree.map(jnp.copy, state.params)
    update = grpo.make_update_step(cfg, grpo.LossConfig(), optimizer, mesh,
                                   num_microbatches=MICRO.value)
    logprobs = train_state.make_compute_logprobs(cfg, mesh)
    rng = np.random.RandomState(0)
    B, T = BATCH.value, SEQ.value
    batch = {"input_ids": rng.randint(0, cfg.vocab_size, (B, T)).astype(np.int32),
             "attention_mask": np.ones((B, T), bool),
             "loss_mask": np.concatenate([np.zeros((B, T // 4)), np.ones((B, T - T // 4))],
                                         1).astype(np.float32),
             "advantages": rng.randn(B).astype(np.float32)}
    batch = parallel.host_to_global(batch, mesh)
    batch["old_logprobs"] = logprobs(state.params, batch)

    def one(state):
        b = dict(batch, ref_logprobs=logprobs(ref, batch))  # The KL reference forward.
        state, m = update(state, b)
        return state, m

    state, m = one(state)
    jax.block_until_ready(m)
    t = time.perf_counter()
    for _ in range(STEPS.value):
        state, m = one(state)
    jax.block_until_ready(m)
    seconds = (time.perf_counter() - t) / STEPS.value
    peak = matmul_peak(DTYPE.value, 4096 if jax.default_backend() != "cpu" else 1024)
    flops = update_flops(cfg, B, T)
    print(f"device {jax.devices()[0].device_kind} x{jax.device_count()}  params "
          f"{model.num_params(cfg) / 1e6:.1f}M  batch {B} x {T}  {DTYPE.value}  remat "
          f"{REMAT.value}")
    print(f"update {seconds * 1e3:.1f} ms  {B * T / seconds:,.0f} tokens/s  "
          f"{flops / seconds / 1e12:.2f} TFLOP/s  peak matmul {peak / 1e12:.2f} TFLOP/s  "
          f"MFU {flops / seconds / (peak * jax.device_count()):.1%}")


if __name__ == "__main__":
    app.run(main)

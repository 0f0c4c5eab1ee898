"""Memory of the GRPO loss (forward + backward) for Qwen3-8B on 8 x 16,384 tokens.

XLA's compile-time memory analysis of abstract shapes: nothing is allocated, so it runs on a
laptop CPU. Prints the chunked loss (`model.token_logprobs` + `grpo.policy_loss`) for the whole
model; with no decoder layers, the chunked head against the naive one that materialises the
float32 [B, T, V] logits; and one layer's attention, blockwise against dense.

    python tools/loss_memory.py [--batch 8] [--seq 16384] [--chunk 512] [--layers 36] [--block 512]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from stepgrpo_jax import grpo, model
from stepgrpo_jax.model import qwen3

GB = 1e9


def abstract_batch(batch: int, seq: int) -> grpo.Batch:
    rows, tokens = jax.ShapeDtypeStruct((batch,), jnp.float32), (batch, seq)
    return {"input_ids": jax.ShapeDtypeStruct(tokens, jnp.int32),
            "attention_mask": jax.ShapeDtypeStruct(tokens, jnp.bool_),
            "loss_mask": jax.ShapeDtypeStruct(tokens, jnp.float32), "advantages": rows,
            "old_logprobs": jax.ShapeDtypeStruct(tokens, jnp.float32),
            "ref_logprobs": jax.ShapeDtypeStruct(tokens, jnp.float32)}


def naive_token_logprobs(cfg, params, input_ids, attention_mask):
    """The reference the chunking avoids: full float32 logits and log-softmax."""
    logits = jax.nn.log_softmax(model.forward(cfg, params, input_ids, attention_mask), axis=-1)
    logp = jnp.take_along_axis(logits[:, :-1], input_ids[:, 1:, None], axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logits[:, :-1]) * logits[:, :-1], axis=-1)
    return jnp.pad(logp, ((0, 0), (1, 0))), jnp.pad(entropy, ((0, 0), (1, 0)))


def peak_gb(cfg: model.ModelConfig, batch: grpo.Batch, logprobs_fn) -> tuple[float, str]:
    """Arguments + outputs + temporaries of the compiled loss-and-gradient, in GB."""
    def loss(params, batch):
        logp, entropy = logprobs_fn(cfg, params, batch["input_ids"], batch["attention_mask"])
        return grpo.policy_loss(logp, batch, grpo.LossConfig(), entropy)[0]

    compiled = jax.jit(jax.value_and_grad(loss)).lower(model.abstract_params(cfg), batch).compile()
    m = compiled.memory_analysis()
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
    total -= m.alias_size_in_bytes
    detail = (f"arguments {m.argument_size_in_bytes / GB:.1f} + outputs "
              f"{m.output_size_in_bytes / GB:.1f} + temporaries {m.temp_size_in_bytes / GB:.1f}")
    return total / GB, detail


def attention_gb(cfg: model.ModelConfig, batch: int, seq: int) -> float:
    """Temporaries of one layer's attention, forward and backward, in GB."""
    def loss(q, k, v, positions, valid):
        out = qwen3.attention(q, k, v, positions, positions, valid, cfg.attention_block)
        return jnp.sum(out.astype(jnp.float32))

    heads = (cfg.num_heads, cfg.num_kv_heads, cfg.num_kv_heads)
    qkv = [jax.ShapeDtypeStruct((batch, seq, n, cfg.head_dim), cfg.compute_dtype) for n in heads]
    rows = [jax.ShapeDtypeStruct((batch, seq), dtype) for dtype in (jnp.int32, jnp.bool_)]
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*qkv, *rows).compile()
    return compiled.memory_analysis().temp_size_in_bytes / GB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=16_384)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--layers", type=int, default=None, help="default: the preset's 36")
    parser.add_argument("--block", type=int, default=512, help="attention block; 0: dense")
    args = parser.parse_args()

    cfg = model.preset("qwen3-8b", dtype="bfloat16", param_dtype="bfloat16", remat="full")
    cfg = cfg.replace(num_layers=args.layers or cfg.num_layers, attention_block=args.block)
    batch = abstract_batch(args.batch, args.seq)
    B, T, V = args.batch, args.seq, cfg.vocab_size
    print(f"Qwen3-8B shapes (bf16 params and compute, remat=full), batch {B} x {T} tokens, "
          f"chunk {args.chunk}, attention block {args.block}, one device")
    print(f"naive float32 [B, T, V] logits alone: {B * T * V * 4 / GB:.1f} GB")

    def chunked(cfg, params, ids, mask):
        return model.token_logprobs(cfg, params, ids, mask, chunk_size=args.chunk)

    head = cfg.replace(num_layers=0)  # Embedding, final norm and LM head only.
    for name, fn in (("chunked", chunked), ("naive", naive_token_logprobs)):
        total, detail = peak_gb(head, batch, fn)
        print(f"head only, {name:7s} loss+grad: {total:7.1f} GB ({detail})")
    total, detail = peak_gb(cfg, batch, chunked)
    print(f"{cfg.num_layers} layers, chunked loss+grad: {total:7.1f} GB ({detail})")
    # With remat=full the backward keeps each layer's input and recomputes the rest per layer.
    print(f"  of which saved layer inputs, [L, B, T, D] bf16: "
          f"{cfg.num_layers * B * T * cfg.embed_dim * 2 / GB:.1f} GB")
    dense = cfg.replace(attention_block=0)
    print(f"one layer's attention, temporaries of forward+backward: blockwise "
          f"{attention_gb(cfg, B, T):.1f} GB, dense {attention_gb(dense, B, T):.1f} GB "
          f"(its float32 scores [B, N, T, T] alone: {B * cfg.num_heads * T * T * 4 / GB:.1f} GB)")
    print("XLA:CPU keeps some bf16 buffers in float32 (one is a float32 copy of the saved layer "
          "inputs),\nso a GPU or TPU needs less than these temporaries.")


if __name__ == "__main__":
    main()

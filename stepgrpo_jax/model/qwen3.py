"""The Qwen3 decoder as pure functions of a params pytree and an optional KV cache.

Einsum letters: B batch, T query tokens, S key slots, D embed, F mlp, N query heads,
K kv heads, G query heads per kv head (N = K*G), H head dim, V vocab, L layers.

Params are a nested dict whose names follow HF's Qwen3 names (so `hf.py` is a short table);
the layers are stacked on a leading `L` axis and run with `lax.scan`, which keeps compile time
independent of depth. `param_specs` is the single table of names, shapes and logical axes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from stepgrpo_jax.model.config import ModelConfig
from stepgrpo_jax.parallel import constrain

Params = dict[str, Any]


class ParamSpec(NamedTuple):
    shape: tuple[int, ...]
    axes: tuple[str | None, ...]
    init: str  # "normal" (std 0.02, HF's initializer_range) or "ones" (norm scales).


def param_specs(cfg: ModelConfig) -> Params:
    """Name -> ParamSpec for every parameter, nested like the params pytree."""
    D, F, N, K, H, L, V = (cfg.embed_dim, cfg.mlp_dim, cfg.num_heads, cfg.num_kv_heads,
                           cfg.head_dim, cfg.num_layers, cfg.vocab_size)
    kv = ParamSpec((L, D, K, H), ("layers", "embed", "kv_heads", "head_dim"), "normal")
    specs = {
        "embed_tokens": ParamSpec((V, D), ("vocab", "embed"), "normal"),
        "layers": {
            "input_layernorm": ParamSpec((L, D), ("layers", "norm"), "ones"),
            "q_proj": ParamSpec((L, D, N, H), ("layers", "embed", "q_heads", "head_dim"), "normal"),
            "k_proj": kv,
            "v_proj": kv,
            "q_norm": ParamSpec((L, H), ("layers", "norm"), "ones"),
            "k_norm": ParamSpec((L, H), ("layers", "norm"), "ones"),
            "o_proj": ParamSpec((L, N, H, D), ("layers", "q_heads", "head_dim", "embed"), "normal"),
            "post_attention_layernorm": ParamSpec((L, D), ("layers", "norm"), "ones"),
            "gate_proj": ParamSpec((L, D, F), ("layers", "embed", "mlp"), "normal"),
            "up_proj": ParamSpec((L, D, F), ("layers", "embed", "mlp"), "normal"),
            "down_proj": ParamSpec((L, F, D), ("layers", "mlp", "embed"), "normal"),
        },
        "norm": ParamSpec((D,), ("norm",), "ones"),
    }
    if not cfg.tie_word_embeddings:
        specs["lm_head"] = ParamSpec((D, V), ("embed", "vocab"), "normal")
    return specs


def _is_spec(x) -> bool:
    return isinstance(x, ParamSpec)


def param_axes(cfg: ModelConfig) -> Params:
    """Logical axis names of every parameter (the tree `parallel.tree_shardings` takes)."""
    return jax.tree.map(lambda s: s.axes, param_specs(cfg), is_leaf=_is_spec)


def abstract_params(cfg: ModelConfig) -> Params:
    """ShapeDtypeStructs of the params: shapes without allocating anything."""
    dtype = jnp.dtype(cfg.param_dtype)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype), param_specs(cfg),
                        is_leaf=_is_spec)


def num_params(cfg: ModelConfig) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params(cfg)))


def init_params(cfg: ModelConfig, rng: jax.Array) -> Params:
    """Random params (normal std 0.02, norm scales 1). Jit with out_shardings to init sharded."""
    specs, treedef = jax.tree.flatten(param_specs(cfg), is_leaf=_is_spec)
    dtype = jnp.dtype(cfg.param_dtype)
    leaves = [jnp.ones(s.shape, dtype) if s.init == "ones"
              else 0.02 * jax.random.normal(k, s.shape, dtype)
              for s, k in zip(specs, jax.random.split(rng, len(specs)), strict=True)]
    return jax.tree.unflatten(treedef, leaves)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Keys and values of every layer; slot s of a row holds the token at position s."""

    k: jax.Array  # [L, B, S, K, H]
    v: jax.Array  # [L, B, S, K, H]

    AXES = ("layers", "cache_batch", "cache_seq", "cache_kv_heads", "head_dim")


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=jnp.bfloat16) -> KVCache:
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """RMSNorm in float32, cast back before the scale (as HF's Qwen3RMSNorm)."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return scale.astype(x.dtype) * xf.astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding, half-split layout. x: [B, T, heads, H], positions: [B, T]."""
    H = x.shape[-1]
    inv_freq = 1.0 / theta ** (jnp.arange(0, H, 2, dtype=jnp.float32) / H)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def attention(q, k, v, q_pos, k_pos, k_valid) -> jax.Array:
    """Causal GQA attention by position. q: [B,T,N,H]; k, v: [B,S,K,H]; q_pos [B,T];
    k_pos, k_valid: [B,S]. A key is seen when it is valid and not after the query."""
    B, T, N, H = q.shape
    K = k.shape[2]
    q = q.reshape(B, T, K, N // K, H)
    scores = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=jnp.float32)
    scores = scores * (H ** -0.5)
    mask = k_valid[:, None, :] & (k_pos[:, None, :] <= q_pos[:, :, None])  # [B, T, S]
    scores = jnp.where(mask[:, None, None], scores, -1e30)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskh->btkgh", probs, v)
    return out.reshape(B, T, N, H)


_REMAT = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def _layer(cfg: ModelConfig, h, p, positions, k_valid, cache_k, cache_v):
    """One decoder block. h: [B,T,D]. With a cache (cache_k [B,S,K,H]) the new keys are written
    at their positions and attention runs over all S slots; without, over the T tokens."""
    dt = cfg.compute_dtype
    x = rms_norm(h, p["input_layernorm"], cfg.rms_norm_eps)
    q = jnp.einsum("btd,dnh->btnh", x, p["q_proj"].astype(dt))
    k = jnp.einsum("btd,dkh->btkh", x, p["k_proj"].astype(dt))
    v = jnp.einsum("btd,dkh->btkh", x, p["v_proj"].astype(dt))
    q = rope(rms_norm(q, p["q_norm"], cfg.rms_norm_eps), positions, cfg.rope_theta)
    k = rope(rms_norm(k, p["k_norm"], cfg.rms_norm_eps), positions, cfg.rope_theta)
    q = constrain(q, ("act_batch", "act_seq", "act_heads", None))
    if cache_k is None:
        k_pos = positions
    else:
        rows = jnp.arange(h.shape[0])[:, None]
        cache_k = cache_k.at[rows, positions].set(k.astype(cache_k.dtype), mode="drop")
        cache_v = cache_v.at[rows, positions].set(v.astype(cache_v.dtype), mode="drop")
        k, v = cache_k.astype(dt), cache_v.astype(dt)
        k_pos = jnp.broadcast_to(jnp.arange(k.shape[1]), k.shape[:2])
    out = attention(q, k, v, positions, k_pos, k_valid)
    out = checkpoint_name(out, "attention")
    h = h + jnp.einsum("btnh,nhd->btd", out, p["o_proj"].astype(dt))
    h = constrain(h, ("act_batch", "act_seq", "act_embed"))
    x = rms_norm(h, p["post_attention_layernorm"], cfg.rms_norm_eps)
    gate = jnp.einsum("btd,df->btf", x, p["gate_proj"].astype(dt))
    up = jnp.einsum("btd,df->btf", x, p["up_proj"].astype(dt))
    act = constrain(jax.nn.silu(gate) * up, ("act_batch", "act_seq", "act_mlp"))
    h = h + jnp.einsum("btf,fd->btd", act, p["down_proj"].astype(dt))
    h = constrain(h, ("act_batch", "act_seq", "act_embed"))
    return h, cache_k, cache_v


def default_positions(attention_mask: jax.Array) -> jax.Array:
    """Positions that skip padding: the i-th real token of a row has position i."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def hidden_states(cfg: ModelConfig, params: Params, input_ids: jax.Array,
                  attention_mask: jax.Array | None = None, positions: jax.Array | None = None,
                  cache: KVCache | None = None) -> tuple[jax.Array, KVCache | None]:
    """Final-normed hidden states [B, T, D] (compute dtype) and the updated cache.

    Without a cache, `attention_mask` [B, T] marks real tokens (any padding side) and positions
    default to counting real tokens. With a cache, token t of row b is written to slot
    `positions[b, t]` and attends to slots 0..positions[b, t]: the caller owns the row lengths,
    and a row rolls back simply by writing from an earlier position again.
    """
    if attention_mask is None:
        attention_mask = jnp.ones(input_ids.shape, bool)
    attention_mask = attention_mask.astype(bool)
    if positions is None:
        positions = default_positions(attention_mask)
    h = params["embed_tokens"].astype(cfg.compute_dtype)[input_ids]
    h = constrain(h, ("act_batch", "act_seq", "act_embed"))

    def body(h, xs):
        p, ck, cv = xs
        if cache is None:
            h, _, _ = _layer(cfg, h, p, positions, attention_mask, None, None)
            return h, None
        k_valid = jnp.ones(ck.shape[:2], bool)
        h, ck, cv = _layer(cfg, h, p, positions, k_valid, ck, cv)
        return h, (ck, cv)

    if cfg.remat != "none":
        body = jax.checkpoint(body, policy=_REMAT[cfg.remat], prevent_cse=False)
    xs = (params["layers"], None, None) if cache is None else (params["layers"], cache.k, cache.v)
    h, new_kv = jax.lax.scan(body, h, xs)
    h = rms_norm(h, params["norm"], cfg.rms_norm_eps)
    return h, (None if cache is None else KVCache(*new_kv))


def lm_head(cfg: ModelConfig, params: Params) -> jax.Array:
    """The output projection [D, V] (the transposed embedding when tied)."""
    if cfg.tie_word_embeddings:
        return params["embed_tokens"].T
    return params["lm_head"]


def logits_from_hidden(cfg: ModelConfig, params: Params, h: jax.Array) -> jax.Array:
    """Float32 logits [..., V] of hidden states [..., D]."""
    w = lm_head(cfg, params).astype(cfg.compute_dtype)
    logits = jnp.einsum("...d,dv->...v", h, w, preferred_element_type=jnp.float32)
    return constrain(logits, ("act_batch",) + (None,) * (logits.ndim - 2) + ("act_vocab",))


def forward(cfg: ModelConfig, params: Params, input_ids: jax.Array,
            attention_mask: jax.Array | None = None, positions: jax.Array | None = None,
            cache: KVCache | None = None):
    """Float32 logits [B, T, V]; with a cache, `(logits, new_cache)`."""
    h, new_cache = hidden_states(cfg, params, input_ids, attention_mask, positions, cache)
    logits = logits_from_hidden(cfg, params, h)
    return logits if cache is None else (logits, new_cache)

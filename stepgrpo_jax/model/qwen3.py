"""The Qwen3 decoder as pure functions of a params pytree and an optional KV cache.

Einsum letters: B batch, T query tokens, S key slots, D embed, F mlp, N query heads,
K kv heads, G query heads per kv head (N = K*G), H head dim, V vocab, L layers.

Params are a nested dict whose names follow HF's Qwen3 names (so `hf.py` is a short table);
the layers are stacked on a leading `L` axis and run with `lax.scan`, which keeps compile time
independent of depth. `param_specs` is the single table of names, shapes and logical axes.
Attention runs blockwise with an online softmax and a FlashAttention-2 backward (memory linear
in the sequence) for training and prefill; decoding reads only the written part of the cache.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
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


def _draw(specs: list[ParamSpec], rng: jax.Array, dtype) -> list[jax.Array]:
    """The leaves of `specs` (in order), the normal ones cut from a single draw."""
    sizes = [math.prod(s.shape) for s in specs if s.init == "normal"]
    flat = 0.02 * jax.random.normal(rng, (sum(sizes),), dtype)
    parts = iter(jnp.split(flat, list(itertools.accumulate(sizes))[:-1]))
    return [jnp.ones(s.shape, dtype) if s.init == "ones" else next(parts).reshape(s.shape)
            for s in specs]


def init_params(cfg: ModelConfig, rng: jax.Array) -> Params:
    """Random params (normal std 0.02, norm scales 1). Jit with out_shardings to init sharded.

    Two normal draws in all, as XLA compiles each RNG call apart (~0.5 s each on CPU): one for
    the layers, inside a scan so that at most one layer is ever drawn unsharded, and one for the
    embeddings.
    """
    specs = param_specs(cfg)
    dtype = jnp.dtype(cfg.param_dtype)
    layer_specs, layer_tree = jax.tree.flatten(specs.pop("layers"), is_leaf=_is_spec)
    one_layer = [s._replace(shape=s.shape[1:]) for s in layer_specs]
    rest_specs, rest_tree = jax.tree.flatten(specs, is_leaf=_is_spec)
    layers_rng, rest_rng = jax.random.split(rng)
    _, layers = jax.lax.scan(lambda _, key: (None, _draw(one_layer, key, dtype)), None,
                             jax.random.split(layers_rng, cfg.num_layers))
    params = jax.tree.unflatten(rest_tree, _draw(rest_specs, rest_rng, dtype))
    return {**params, "layers": jax.tree.unflatten(layer_tree, layers)}


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


_MASKED = -1e30  # Finite: a block hiding every key gives exp(0) terms, which the mask zeroes.


def _seen(q_pos: jax.Array, k_pos: jax.Array, k_valid: jax.Array) -> jax.Array:
    """[B, 1, 1, T, S]: query t sees key s when the key is valid and not after the query."""
    return (k_valid[:, None, :] & (k_pos[:, None, :] <= q_pos[:, :, None]))[:, None, None]


def _scores(q: jax.Array, k: jax.Array, seen: jax.Array) -> jax.Array:
    """Scaled, masked float32 scores [B, K, G, T, S] of q [B, T, K, G, H] and k [B, S, K, H]."""
    s = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=jnp.float32)
    return jnp.where(seen, s * q.shape[-1] ** -0.5, _MASKED)


def _dense_attention(q, k, v, q_pos, k_pos, k_valid) -> jax.Array:
    """Materialises all scores: for decoding (T = 1) and short sequences."""
    seen = _seen(q_pos, k_pos, k_valid)
    probs = jnp.where(seen, jax.nn.softmax(_scores(q, k, seen), axis=-1), 0.0)
    return jnp.einsum("bkgts,bskh->btkgh", probs.astype(v.dtype), v)


def _blocks(x: jax.Array, size: int, fill=0) -> jax.Array:
    """[B, S, ...] -> [n, B, size, ...], S padded with `fill` up to n * size."""
    x = jnp.pad(x, [(0, 0), (0, -x.shape[1] % size)] + [(0, 0)] * (x.ndim - 2),
                constant_values=fill)
    return jnp.moveaxis(x.reshape(x.shape[0], -1, size, *x.shape[2:]), 1, 0)


def _unblock(x: jax.Array, length: int) -> jax.Array:
    """Inverse of `_blocks`: [n, B, size, ...] -> [B, length, ...]."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :length]


def _key_blocks(k, v, k_pos, k_valid, size: int):
    # Padding keys are invalid, so they are never seen.
    return _blocks(k, size), _blocks(v, size), _blocks(k_pos, size), _blocks(k_valid, size, False)


def _online_init(q: jax.Array):
    """Accumulator, running max and running sum of the online softmax of q [B, C, K, G, H]."""
    B, C, K, G, H = q.shape
    return jnp.zeros((B, K, G, C, H)), jnp.full((B, K, G, C), _MASKED), jnp.zeros((B, K, G, C))


def _online_update(carry, q, k, v, seen):
    """Folds one key block (k, v [B, S, K, H], seen [B, 1, 1, C, S]) into the online softmax.
    A row that sees no key of the block keeps its carry exactly (its terms are all 0)."""
    acc, run_max, run_sum = carry
    s = _scores(q, k, seen)
    new_max = jnp.maximum(run_max, s.max(-1))
    p = jnp.where(seen, jnp.exp(s - new_max[..., None]), 0.0)
    rescale = jnp.exp(run_max - new_max)
    pv = jnp.einsum("bkgts,bskh->bkgth", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return acc * rescale[..., None] + pv, new_max, run_sum * rescale + p.sum(-1)


def _online_result(carry):
    """The output [B, C, K, G, H] (float32) and log-sum-exp [B, K, G, C] of the online softmax."""
    acc, run_max, run_sum = carry
    run_sum = jnp.where(run_sum == 0, 1.0, run_sum)  # A query seeing no key outputs 0 (as dense).
    return jnp.einsum("bkgth->btkgh", acc / run_sum[..., None]), run_max + jnp.log(run_sum)


def _flash_rows(q, q_pos, keys):
    """One query block q [B, C, K, G, H] against every key block, keeping a running max and sum
    of the scores (online softmax). Returns the output [B, C, K, G, H] and the log-sum-exp
    [B, K, G, C]."""

    def step(carry, key_block):
        k, v, k_pos, k_valid = key_block
        seen = _seen(q_pos, k_pos, k_valid)
        # Skips blocks that hide every key: the causal upper triangle, unwritten cache slots.
        update = functools.partial(_online_update, q=q, k=k, v=v, seen=seen)
        return jax.lax.cond(seen.any(), update, lambda c: c, carry), None

    carry, _ = jax.lax.scan(step, _online_init(q), keys)
    return _online_result(carry)


# Under grad of the layer scan, scan's partial evaluation would hoist every block's
# position-only values (masks, broadcast constants) out of the loop and stack them, O(T * S);
# as a checkpoint, it saves only the inputs.
@functools.partial(jax.checkpoint, static_argnums=(6,), prevent_cse=False)
def _flash_forward(q, k, v, q_pos, k_pos, k_valid, block):
    keys = _key_blocks(k, v, k_pos, k_valid, block)
    n = min(block, q.shape[1])
    out, lse = jax.lax.map(lambda row: _flash_rows(*row, keys), (_blocks(q, n), _blocks(q_pos, n)))
    return _unblock(out, q.shape[1]).astype(q.dtype), lse  # lse stays blocked: [n, B, K, G, C].


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _flash_attention(q, k, v, q_pos, k_pos, k_valid, block):
    """Blockwise attention, equal to `_dense_attention` with memory linear in T and S: neither
    pass keeps more than one [B, K, G, block, block] block of scores."""
    return _flash_forward(q, k, v, q_pos, k_pos, k_valid, block)[0]


def _flash_attention_fwd(q, k, v, q_pos, k_pos, k_valid, block):
    out, lse = _flash_forward(q, k, v, q_pos, k_pos, k_valid, block)
    return out, (q, k, v, q_pos, k_pos, k_valid, out, lse)


def _flash_rows_bwd(q, q_pos, d_out, out, lse, keys, d_keys):
    """Gradients of one query block (FlashAttention-2): recomputes each block's probabilities
    from the saved log-sum-exp; returns dq [B, C, K, G, H] and d_keys (dk, dv) accumulated."""
    f32 = jnp.float32
    delta = jnp.einsum("btkgh,btkgh->bkgt", d_out.astype(f32), out.astype(f32))  # [B, K, G, C]

    def step(dq, xs):
        (k, v, k_pos, k_valid), (dk, dv) = xs
        seen = _seen(q_pos, k_pos, k_valid)

        def update(dq, dk, dv):
            p = jnp.where(seen, jnp.exp(_scores(q, k, seen) - lse[..., None]), 0.0)
            dp = jnp.einsum("btkgh,bskh->bkgts", d_out, v, preferred_element_type=f32)
            ds = (p * (dp - delta[..., None]) * q.shape[-1] ** -0.5).astype(q.dtype)
            dv += jnp.einsum("bkgts,btkgh->bskh", p.astype(d_out.dtype), d_out,
                             preferred_element_type=f32)
            dq += jnp.einsum("bkgts,bskh->btkgh", ds, k, preferred_element_type=f32)
            dk += jnp.einsum("bkgts,btkgh->bskh", ds, q, preferred_element_type=f32)
            return dq, dk, dv

        dq, dk, dv = jax.lax.cond(seen.any(), update, lambda *c: c, dq, dk, dv)
        return dq, (dk, dv)

    return jax.lax.scan(step, jnp.zeros(q.shape, f32), (keys, d_keys))


def _flash_attention_bwd(block, res, d_out):
    q, k, v, q_pos, k_pos, k_valid, out, lse = res
    keys = _key_blocks(k, v, k_pos, k_valid, block)
    n = min(block, q.shape[1])
    rows = _blocks(q, n), _blocks(q_pos, n), _blocks(d_out, n), _blocks(out, n), lse

    def row_block(d_keys, row):
        dq, d_keys = _flash_rows_bwd(*row, keys, d_keys)
        return d_keys, dq

    d_keys = jnp.zeros(keys[0].shape, jnp.float32), jnp.zeros(keys[1].shape, jnp.float32)
    (dk, dv), dq = jax.lax.scan(row_block, d_keys, rows)
    S = k.shape[1]
    return (_unblock(dq, q.shape[1]).astype(q.dtype), _unblock(dk, S).astype(k.dtype),
            _unblock(dv, S).astype(v.dtype), None, None, None)


_flash_attention.defvjp(_flash_attention_fwd, _flash_attention_bwd)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, q_pos: jax.Array, k_pos: jax.Array,
              k_valid: jax.Array, block: int = 0) -> jax.Array:
    """Causal GQA attention by position. q: [B,T,N,H]; k, v: [B,S,K,H]; q_pos [B,T];
    k_pos, k_valid: [B,S]. A key is seen when it is valid and not after the query; a query that
    sees no key outputs 0. With `block` > 0, more than one query and more than `block` keys, runs
    blockwise (training, prefill); else dense (decoding, short sequences)."""
    B, T, N, H = q.shape
    q = q.reshape(B, T, k.shape[2], N // k.shape[2], H)
    if block and T > 1 and k.shape[1] > block:
        out = _flash_attention(q, k, v, q_pos, k_pos, k_valid, block)
    else:
        out = _dense_attention(q, k, v, q_pos, k_pos, k_valid)
    return out.reshape(B, T, N, H)


def _cached_attention(q, k, v, positions, k_all, v_all, layer, block: int):
    """Attention of q [B, T, N, H] over layer `layer` of the stacked caches k_all, v_all
    [L, B, S, K, H], after writing the new k, v [B, T, K, H] at their positions (writes past S
    drop). Returns the output and the updated caches.

    Prefill (T > 1) runs `attention` over every slot. Decoding reads only the written part of
    the cache: key blocks of `block` slots (all S when 0) up to the largest position fed, in a
    loop whose trip count is that length, so a step's cost grows with the longest row's filled
    length, not with S. Keys past a row's own position are masked as usual; a block a row does
    not see leaves its online softmax exactly as it was, so the result does not depend on the
    other rows of the batch or on S.
    """
    B, T, N, H = q.shape
    L, _, S, K, _ = k_all.shape
    rows = jnp.arange(B)[:, None]
    k_all = k_all.at[layer, rows, positions].set(k.astype(k_all.dtype), mode="drop")
    v_all = v_all.at[layer, rows, positions].set(v.astype(v_all.dtype), mode="drop")
    if T > 1:
        k_pos = jnp.broadcast_to(jnp.arange(S), (B, S))
        out = attention(q, k_all[layer].astype(q.dtype), v_all[layer].astype(q.dtype), positions,
                        k_pos, jnp.ones((B, S), bool), block)
        return out, k_all, v_all
    qg = q.reshape(B, T, K, N // K, H)
    size = min(block or S, S)
    # Rows that feed past the cache (finished rows) read nothing.
    filled = jnp.max(jnp.where(positions < S, positions + 1, 0))
    read = functools.partial(read_cache_block, q=qg, k_all=k_all, v_all=v_all, layer=layer,
                             q_pos=positions, size=size)
    carry = jax.lax.fori_loop(0, (filled + size - 1) // size, read, _online_init(qg))
    out, _ = _online_result(carry)
    return out.astype(q.dtype).reshape(B, T, N, H), k_all, v_all


def read_cache_block(j, carry, q, k_all, v_all, layer, q_pos, size: int):
    """Folds key block j (slots j * size on, of layer `layer` of the caches [L, B, S, K, H])
    into the online softmax `carry` of q [B, T, K, G, H] at positions q_pos [B, T]: one trip of
    the decode attention's loop."""
    B, S, K, H = k_all.shape[1:]
    # The last block is moved back to end at S; its slots before j * size were read already.
    start = jnp.minimum(j * size, S - size)
    kb, vb = (jax.lax.dynamic_slice(c, (layer, 0, start, 0, 0), (1, B, size, K, H))[0]
              .astype(q.dtype) for c in (k_all, v_all))
    k_pos = jnp.broadcast_to(start + jnp.arange(size), (B, size))
    return _online_update(carry, q, kb, vb, _seen(q_pos, k_pos, k_pos >= j * size))


_REMAT = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def _layer(cfg: ModelConfig, h, p, positions, k_valid, cache=None):
    """One decoder block. h: [B,T,D]. Without a cache, attention runs over the T tokens
    (`k_valid` marks the real ones); with one, `cache` = (k_all, v_all [L,B,S,K,H], this layer's
    index): see `_cached_attention`. Returns h and the updated (k_all, v_all) or None."""
    dt = cfg.compute_dtype
    x = rms_norm(h, p["input_layernorm"], cfg.rms_norm_eps)
    q = jnp.einsum("btd,dnh->btnh", x, p["q_proj"].astype(dt))
    k = jnp.einsum("btd,dkh->btkh", x, p["k_proj"].astype(dt))
    v = jnp.einsum("btd,dkh->btkh", x, p["v_proj"].astype(dt))
    q = rope(rms_norm(q, p["q_norm"], cfg.rms_norm_eps), positions, cfg.rope_theta)
    k = rope(rms_norm(k, p["k_norm"], cfg.rms_norm_eps), positions, cfg.rope_theta)
    q = constrain(q, ("act_batch", "act_seq", "act_heads", None))
    if cache is None:
        out = attention(q, k, v, positions, positions, k_valid, cfg.attention_block)
    else:
        out, *cache = _cached_attention(q, k, v, positions, *cache, cfg.attention_block)
    out = checkpoint_name(out, "attention")
    h = h + jnp.einsum("btnh,nhd->btd", out, p["o_proj"].astype(dt))
    h = constrain(h, ("act_batch", "act_seq", "act_embed"))
    x = rms_norm(h, p["post_attention_layernorm"], cfg.rms_norm_eps)
    gate = jnp.einsum("btd,df->btf", x, p["gate_proj"].astype(dt))
    up = jnp.einsum("btd,df->btf", x, p["up_proj"].astype(dt))
    act = constrain(jax.nn.silu(gate) * up, ("act_batch", "act_seq", "act_mlp"))
    h = h + jnp.einsum("btf,fd->btd", act, p["down_proj"].astype(dt))
    h = constrain(h, ("act_batch", "act_seq", "act_embed"))
    return h, cache


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
    # Gather the table's fsdp-sharded embed dim first, as FSDP does for every weight: a lookup
    # from it into a batch sharded over fsdp makes XLA rematerialise the whole table instead.
    table = constrain(params["embed_tokens"].astype(cfg.compute_dtype), ("vocab", None))
    h = table[input_ids]
    h = constrain(h, ("act_batch", "act_seq", "act_embed"))

    if cache is None:
        def body(h, p):
            h, _ = _layer(cfg, h, p, positions, attention_mask)
            return h, None

        if cfg.remat != "none":
            body = jax.checkpoint(body, policy=_REMAT[cfg.remat], prevent_cse=False)
        h, _ = jax.lax.scan(body, h, params["layers"])
    else:
        def body(carry, xs):
            h, k_all, v_all = carry
            p, i = xs
            # The whole cache is carried and only this call's slots are written, in place:
            # returning each layer's slice would copy the whole cache every decode step.
            h, (k_all, v_all) = _layer(cfg, h, p, positions, None, (k_all, v_all, i))
            return (h, k_all, v_all), None

        layers = (params["layers"], jnp.arange(cfg.num_layers))
        (h, k_all, v_all), _ = jax.lax.scan(body, (h, cache.k, cache.v), layers)
        cache = KVCache(k_all, v_all)
    h = rms_norm(h, params["norm"], cfg.rms_norm_eps)
    return h, cache


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

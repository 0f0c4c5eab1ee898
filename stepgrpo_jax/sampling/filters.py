"""Choosing the next token: greedy, or temperature / top-k / top-p sampling per row."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stepgrpo_jax.sampling.config import SamplerConfig


def request_keys(rng: jax.Array, request_ids: jax.Array) -> jax.Array:
    """One PRNG stream per completion request [B]: `fold_in(rng, request_id)`. A completion's
    random numbers then depend on its request only, never on the row, batch or moment it runs
    in (`choose` folds in the completion's own iteration count next)."""
    return jax.vmap(jax.random.fold_in, (None, 0))(rng, request_ids)


# Vocabulary block of the two-stage argmax and draw: over a 152k vocabulary, a pass of plain
# reductions over blocks and a small second stage are several times faster on CPU than XLA's
# argmax (a variadic reduce) or a Gumbel number for every entry.
_BLOCK = 128


def _blocks(x: jax.Array) -> jax.Array:
    """[B, N] -> [B, N / _BLOCK, _BLOCK], the last block padded with -inf."""
    pad = -x.shape[-1] % _BLOCK
    x = jnp.pad(x, ((0, 0), (0, pad)), constant_values=-jnp.inf)
    return x.reshape(x.shape[0], -1, _BLOCK)


def _in_block(blocks: jax.Array, block: jax.Array) -> jax.Array:
    return jnp.take_along_axis(blocks, block[:, None, None], axis=1)[:, 0]  # [B, _BLOCK]


def greedy(logits: jax.Array) -> jax.Array:
    """Index of each row's maximum [B], the first one on ties (as jnp.argmax): the first block
    holding the maximum, then the first maximum inside it."""
    if logits.shape[-1] <= 2 * _BLOCK:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    blocks = _blocks(logits)
    block = jnp.argmax(blocks.max(axis=-1), axis=-1)
    return (block * _BLOCK + jnp.argmax(_in_block(blocks, block), axis=-1)).astype(jnp.int32)


def categorical(keys: jax.Array, logits: jax.Array) -> jax.Array:
    """One draw per row from softmax(logits [B, N]) with row b's key, by the Gumbel-max trick in
    two stages: a block by its total mass, then an entry inside it. Exact, with N / _BLOCK +
    _BLOCK random numbers a row instead of N (with threefry on CPU, drawing 152k of them cost
    more than a small model's whole step)."""
    if logits.shape[-1] <= 2 * _BLOCK:
        return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)
    blocks = _blocks(logits)
    block_keys, entry_keys = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
    block = jax.vmap(jax.random.categorical)(block_keys, jax.nn.logsumexp(blocks, axis=-1))
    entry = jax.vmap(jax.random.categorical)(entry_keys, _in_block(blocks, block))
    return (block * _BLOCK + entry).astype(jnp.int32)


def choose(logits: jax.Array, keys: jax.Array, step: jax.Array, scfg: SamplerConfig
           ) -> jax.Array:
    """Next tokens [B] from float32 logits [B, V]; row b draws from stream `keys[b]` at its
    `step` (scalar or [B]: the decode iterations of that row's completion so far).

    Filters apply in HF's order: temperature, top-k, then top-p on what is left. Top-p keeps the
    smallest set of most likely tokens whose mass reaches `top_p`. Only the top-p-only case sorts
    the whole vocabulary; with top-k, top-p looks at the k survivors.
    """
    if scfg.temperature == 0:
        return greedy(logits)
    keys = jax.vmap(jax.random.fold_in)(keys, jnp.broadcast_to(step, logits.shape[:1]))
    logits = logits / scfg.temperature
    if scfg.top_k == 0 and scfg.top_p == 1:
        return categorical(keys, logits)
    k = scfg.top_k or logits.shape[-1]
    values, ids = jax.lax.top_k(logits, min(k, logits.shape[-1]))  # [B, k], descending.
    if scfg.top_p < 1:
        probs = jax.nn.softmax(values, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        values = jnp.where(mass_before < scfg.top_p, values, -jnp.inf)
    choice = categorical(keys, values)
    return jnp.take_along_axis(ids, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)

"""Per-token log-probs and entropies of a sequence under the model, chunked over positions."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stepgrpo_jax.model import qwen3
from stepgrpo_jax.model.config import ModelConfig
from stepgrpo_jax.model.qwen3 import Params


def token_logprobs(cfg: ModelConfig, params: Params, input_ids: jax.Array,
                   attention_mask: jax.Array, chunk_size: int = 512
                   ) -> tuple[jax.Array, jax.Array]:
    """Log-prob of each token given the tokens before it, and the entropy of that prediction.

    Both [B, T] float32; position 0 has no prediction and gets 0. The float32 logits exist one
    chunk of `chunk_size` positions at a time ([B, chunk, V]), and the backward pass recomputes
    them chunk by chunk, so no [B, T, V] tensor is ever live.
    """
    h, _ = qwen3.hidden_states(cfg, params, input_ids, attention_mask)  # [B, T, D]
    B, T, D = h.shape
    n = -(-(T - 1) // chunk_size)
    pad = n * chunk_size - (T - 1)
    # Hidden state t predicts token t + 1.
    h = jnp.pad(h[:, :-1], ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(input_ids[:, 1:], ((0, 0), (0, pad)))
    h = h.reshape(B, n, chunk_size, D).swapaxes(0, 1)  # [n, B, C, D]
    targets = targets.reshape(B, n, chunk_size).swapaxes(0, 1)  # [n, B, C]

    @jax.checkpoint
    def chunk(xs):
        h_c, t_c = xs
        logits = qwen3.logits_from_hidden(cfg, params, h_c)  # [B, C, V] float32
        lse = jax.nn.logsumexp(logits, axis=-1)
        # A masked sum rather than a gather: it stays local when the vocab is sharded.
        hit = jnp.arange(logits.shape[-1]) == t_c[..., None]
        logp = jnp.sum(jnp.where(hit, logits, 0.0), axis=-1) - lse
        entropy = lse - jnp.sum(jnp.exp(logits - lse[..., None]) * logits, axis=-1)
        return logp, entropy

    logp, entropy = jax.lax.map(chunk, (h, targets))  # [n, B, C] each

    def unchunk(x):
        x = x.swapaxes(0, 1).reshape(B, n * chunk_size)[:, :T - 1]
        return jnp.pad(x, ((0, 0), (1, 0)))

    return unchunk(logp), unchunk(entropy)

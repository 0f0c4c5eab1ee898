"""Chunked per-token log-probs and entropies against the full softmax, gradients included."""

import jax
import jax.numpy as jnp
import numpy as np
from grpo_worker import TINY, make_batch, tiny_params

from stepgrpo_jax import model


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_chunked_logprobs_match_full_softmax():
    params = tiny_params()
    b = make_batch(3, prompt_len=5, completion_len=7)  # T = 12: chunks of 5 need padding.
    ids, mask, weights = (jnp.asarray(b[k]) for k in ("input_ids", "attention_mask", "loss_mask"))

    def full(p):
        logits = jax.nn.log_softmax(model.forward(TINY, p, ids, mask), axis=-1)[:, :-1]
        logp = jnp.take_along_axis(logits, ids[:, 1:, None], axis=-1)[..., 0]
        entropy = -jnp.sum(jnp.exp(logits) * logits, axis=-1)
        return jnp.pad(logp, ((0, 0), (1, 0))), jnp.pad(entropy, ((0, 0), (1, 0)))

    def chunked(p):
        return model.token_logprobs(TINY, p, ids, mask, chunk_size=5)

    def with_grad(f):  # The log-probs, their entropy, and d(sum of learned log-probs)/dparams.
        out = jax.value_and_grad(lambda p: (jnp.sum(f(p)[0] * weights), f(p)), has_aux=True)
        (_, (logp, entropy)), grads = jax.jit(out)(params)
        return logp, entropy, grads

    got, want = with_grad(chunked), with_grad(full)
    diffs = [_max_diff(x, y) for x, y in zip(got, want, strict=True)]
    print("max |diff| of logp, entropy, grad: " + ", ".join(f"{d:.2g}" for d in diffs))
    assert diffs[0] <= 1e-5 and diffs[1] <= 1e-5 and diffs[2] <= 1e-6
    assert np.all(np.asarray(got[0])[:, 0] == 0)

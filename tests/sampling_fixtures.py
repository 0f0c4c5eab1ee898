"""Tiny models, prompts and settings that the sampler, DTR and engine tests share."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from stepgrpo_jax import model, sampling

TINY = model.ModelConfig(vocab_size=128, embed_dim=64, mlp_dim=128, num_layers=2, num_heads=4,
                         num_kv_heads=2, head_dim=16, tie_word_embeddings=False)
PLAIN = sampling.SamplerConfig(max_new_tokens=16, prompt_buckets=(8, 16), temperature=0.0,
                               eos_ids=(1,), think_end_id=2, cache_dtype="float32")
TABLES = sampling.TriggerTables.from_strings([f"<{i}>" for i in range(128)], ("Wait",))


def biased_params(cfg: model.ModelConfig, seed: int, bias: dict[int, float],
                  follow: dict[int, dict[int, float]] | None = None, scale: float = 0.3,
                  head: float = 0.1) -> model.Params:
    """Random params (weights of std `scale`, LM head `head`) whose logits also get `bias[v]`
    on token v and `follow[a][v]` on v right after token a.

    Each of these rides on a residual channel of its own that no layer reads (norm scale 0) or
    writes (zero output rows): channel 0 holds 1 in every embedding, channel c holds 1 in token
    a's. The final norm turns such a channel into a roughly constant feature (measured below),
    and the LM head's row for the channel holds the logit offsets.
    """
    follow = follow or {}
    n = 1 + len(follow)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(
        lambda s: np.ones(s.shape, np.float32) if s.init == "ones"
        else rng.normal(0, scale, s.shape).astype(np.float32),
        model.param_specs(cfg), is_leaf=lambda s: hasattr(s, "init"))
    layers = params["layers"]
    for name in ("input_layernorm", "post_attention_layernorm"):
        layers[name][:, :n] = 0
    layers["o_proj"][..., :n] = 0
    layers["down_proj"][..., :n] = 0
    embed = params["embed_tokens"]
    embed[:, :n] = 0
    embed[:, 0] = 1
    for channel, a in enumerate(follow, start=1):
        embed[a, channel] = 1
    ids = rng.integers(0, cfg.vocab_size, (8, 16))
    h, _ = _hidden_states(cfg)(jax.tree.map(jnp.asarray, params), jnp.asarray(ids))
    unit = float(jnp.mean(h[..., 0]))
    head_w = params["lm_head"] * (head / scale)
    head_w[:n] = 0
    for v, b in bias.items():
        head_w[0, v] = b / unit
    for channel, targets in enumerate(follow.values(), start=1):
        for v, b in targets.items():
            head_w[channel, v] = b / unit
    return jax.tree.map(jnp.asarray, params | {"lm_head": head_w})


@functools.cache
def _hidden_states(cfg: model.ModelConfig):
    return jax.jit(functools.partial(model.hidden_states, cfg))


@functools.cache
def _forward(cfg: model.ModelConfig):
    return jax.jit(functools.partial(model.forward, cfg))


def full_logprobs(cfg, params, ids, pad_to: int = 64) -> np.ndarray:
    """Next-token log-probs [len(ids), V] after each prefix of `ids`, from one forward pass
    over the whole text (no cache), padded to a fixed length so that it compiles once."""
    padded = np.zeros((1, pad_to), np.int32)
    padded[0, :len(ids)] = ids
    mask = np.arange(pad_to)[None] < len(ids)
    logits = _forward(cfg)(params, jnp.asarray(padded), jnp.asarray(mask))
    z = np.asarray(logits[0, :len(ids)], np.float64)
    z -= z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def teacher_forced_logprobs(cfg, params, prompt, completion) -> np.ndarray:
    """log p(completion[t] | prompt, completion[:t]), float32 model, scored in one pass."""
    logp = full_logprobs(cfg, params, list(prompt) + list(completion))
    positions = np.arange(len(prompt) - 1, len(prompt) + len(completion) - 1)
    return logp[positions, np.asarray(completion)]


def random_prompts(seed: int, n: int, lengths=(3, 12), low: int = 20) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(low, TINY.vocab_size, size=rng.integers(*lengths)).tolist()
            for _ in range(n)]


# A made-up vocabulary with the pieces DTR reacts to; the rest are filler words.
VOCAB = ["<pad>", "<eos>", "</think>", "Wait", " Wait", "W", "ait", ",", "\n\n", "\n", "**",
         "Final", " Answer", "\\", "boxed", "{", "}", "Waiting", " wait", "ing", " ", "Hmm", ".",
         " so", "4", "2"]
VOCAB += [f" w{i}" for i in range(TINY.vocab_size - len(VOCAB))]
EOS, THINK_END = 1, 2
DTR_CFG = sampling.SamplerConfig(
    max_new_tokens=40, prompt_buckets=(16,), temperature=0.0, eos_ids=(EOS,),
    think_end_id=THINK_END, cache_dtype="float32",
    # Small budgets so that every path is taken in 40 tokens: "\n\\boxed" probes of at most 5
    # tokens, 3 probes, thinking budget 24; probes from token 8 on exit.
    dtr=sampling.DTRConfig(probe_ids=(9, 13, 14), exit_ids=(9, 2, 8), natural_ids=(8,),
                           threshold=0.5, probe_budget=5, max_probes=3, think_budget_frac=0.6,
                           exit_margin=16))
DTR_TABLES = sampling.TriggerTables.from_strings(VOCAB, ("Wait",))
# Triggers, `</think>` and EOS are likely; after "boxed" the model tends to write "{4}" or "{2}"
# and then `</think>`, so that some probes close with a confidence around the threshold.
DTR_PARAMS = biased_params(
    TINY, 0, bias={3: 1.5, 4: 1.5, 5: 0.9, 6: 0.9, 7: 0.9, 2: 0.6, 1: 1.2, 8: 0.6},
    follow={14: {15: 7.5}, 15: {24: 3.75, 25: 3.75}, 24: {16: 5.0}, 25: {16: 5.0},
            16: {2: 5.0}})

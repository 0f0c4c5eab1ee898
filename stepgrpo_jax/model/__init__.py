"""The decoder (Qwen3; Qwen2 and Llama by config switches): shapes (`config`), the functional
model (`qwen3`), per-token log-probs under it (`logprobs`), and its Flax NNX face
(`nnx.Decoder`, imported on its own to keep Flax off the hot path's imports)."""

from stepgrpo_jax.model.config import (
    FAMILIES,
    PRESETS,
    Llama3RopeScaling,
    ModelConfig,
    UnsupportedModelError,
    from_hf_config,
    preset,
    to_hf_config,
)
from stepgrpo_jax.model.logprobs import token_logprobs
from stepgrpo_jax.model.qwen3 import (
    KVCache,
    Params,
    abstract_params,
    default_positions,
    forward,
    hidden_states,
    init_cache,
    init_params,
    lm_head,
    logits_from_hidden,
    num_params,
    param_axes,
    param_specs,
    rope_frequencies,
)

__all__ = [
    "FAMILIES", "PRESETS", "KVCache", "Llama3RopeScaling", "ModelConfig", "Params",
    "UnsupportedModelError", "abstract_params", "default_positions", "forward", "from_hf_config",
    "hidden_states", "init_cache", "init_params", "lm_head", "logits_from_hidden", "num_params",
    "param_axes", "param_specs", "preset", "rope_frequencies", "to_hf_config", "token_logprobs",
]

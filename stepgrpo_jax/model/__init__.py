"""The Qwen3 decoder: shapes (`config`), the functional model (`qwen3`) and per-token
log-probs under it (`logprobs`)."""

from stepgrpo_jax.model.config import (
    PRESETS,
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
)

__all__ = [
    "PRESETS", "KVCache", "ModelConfig", "Params", "UnsupportedModelError", "abstract_params",
    "default_positions", "forward", "from_hf_config", "hidden_states", "init_cache",
    "init_params", "lm_head", "logits_from_hidden", "num_params", "param_axes", "param_specs",
    "preset", "to_hf_config", "token_logprobs",
]

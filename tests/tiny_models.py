"""Tiny random HF models of each supported family for parity tests (CPU torch, float32)."""

from __future__ import annotations

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

TINY = dict(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=1e6,
            tie_word_embeddings=False, max_position_embeddings=512, bos_token_id=1,
            eos_token_id=2)

# HF model_type -> (config class, model class).
FAMILIES = {"qwen3": (Qwen3Config, Qwen3ForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
            "llama": (LlamaConfig, LlamaForCausalLM)}

# Llama 3.1's rope scaling, with a short original context so that the tiny head dim has
# frequencies in all three bands (kept, interpolated, stretched).
LLAMA3_ROPE = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=64)


def tiny_hf_model(seed: int = 0, family: str = "qwen3", **overrides) -> PreTrainedModel:
    """A random model of `family`; norm scales and biases (HF initialises them to 1 and 0) are
    randomised too, so that parity tests see them."""
    torch.manual_seed(seed)
    config_class, model_class = FAMILIES[family]
    model = model_class(config_class(**{**TINY, **overrides})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model


def save_tiny_hf_model(path: str, seed: int = 0, dtype: torch.dtype = torch.float32,
                       family: str = "qwen3", **overrides) -> PreTrainedModel:
    model = tiny_hf_model(seed, family, **overrides).to(dtype)
    model.save_pretrained(path)
    return model

"""Tiny random HF Qwen3 models for parity tests (CPU torch, float32)."""

from __future__ import annotations

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

TINY = dict(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=1e6,
            tie_word_embeddings=False, max_position_embeddings=512, bos_token_id=1,
            eos_token_id=2)


def tiny_hf_model(seed: int = 0, **overrides) -> Qwen3ForCausalLM:
    """A random Qwen3ForCausalLM; norm scales are randomised too so parity tests see them."""
    torch.manual_seed(seed)
    config = Qwen3Config(**{**TINY, **overrides})
    model = Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    return model


def save_tiny_hf_model(path: str, seed: int = 0, dtype: torch.dtype = torch.float32,
                       **overrides) -> Qwen3ForCausalLM:
    model = tiny_hf_model(seed, **overrides).to(dtype)
    model.save_pretrained(path)
    return model

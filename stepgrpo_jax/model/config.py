"""Qwen3 model shapes: a frozen `ModelConfig`, named presets, and the HF `config.json` mapping."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

# Checkpointing policies for the layer scan (`ModelConfig.remat`).
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes and numerics of a Qwen3 decoder. Hashable: it is a static argument of jit."""

    vocab_size: int = 151_936
    embed_dim: int = 1024
    mlp_dim: int = 3072
    num_layers: int = 28
    num_heads: int = 16
    num_kv_heads: int = 8
    head_dim: int = 128
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 40_960
    dtype: str = "float32"  # Compute dtype of activations and matmuls.
    param_dtype: str = "float32"  # Storage dtype of the parameters.
    remat: str = "none"  # One of REMAT_POLICIES: what the backward pass recomputes per layer.
    # Query/key block of the blockwise (flash) attention, whose memory is linear in the sequence;
    # 0, or sequences no longer than it, use dense attention (float32 scores [B, N, T, S]).
    attention_block: int = 512
    # Special tokens recorded in config.json (kept so an export reproduces the source config).
    bos_token_id: int | None = 151_643
    eos_token_id: int | tuple[int, ...] | None = 151_645

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of "
                             f"num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.attention_block < 0:
            raise ValueError(f"attention_block={self.attention_block} must be >= 0")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r}; expected one of {REMAT_POLICIES}")
        for field in ("dtype", "param_dtype"):
            if getattr(self, field) not in ("float32", "bfloat16"):
                raise ValueError(f"{field}={getattr(self, field)!r}; expected float32 or bfloat16")

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


_QWEN3 = dict(vocab_size=151_936, head_dim=128, num_kv_heads=8, rope_theta=1_000_000.0,
              rms_norm_eps=1e-6, max_position_embeddings=40_960)

PRESETS: dict[str, ModelConfig] = {
    "qwen3-0.6b": ModelConfig(**_QWEN3, embed_dim=1024, mlp_dim=3072, num_layers=28,
                              num_heads=16, tie_word_embeddings=True),
    "qwen3-1.7b": ModelConfig(**_QWEN3, embed_dim=2048, mlp_dim=6144, num_layers=28,
                              num_heads=16, tie_word_embeddings=True),
    "qwen3-4b": ModelConfig(**_QWEN3, embed_dim=2560, mlp_dim=9728, num_layers=36,
                            num_heads=32, tie_word_embeddings=True),
    "qwen3-8b": ModelConfig(**_QWEN3, embed_dim=4096, mlp_dim=12288, num_layers=36,
                            num_heads=32, tie_word_embeddings=False),
    "qwen3-14b": ModelConfig(**_QWEN3, embed_dim=5120, mlp_dim=17408, num_layers=40,
                             num_heads=40, tie_word_embeddings=False),
    "qwen3-32b": ModelConfig(**_QWEN3, embed_dim=5120, mlp_dim=25600, num_layers=64,
                             num_heads=64, tie_word_embeddings=False),
}


def preset(name: str, **changes: Any) -> ModelConfig:
    """A named Qwen3 size (`qwen3-0.6b` ... `qwen3-32b`), optionally with fields changed."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name].replace(**changes)


class UnsupportedModelError(ValueError):
    """The HF config describes a model this decoder does not implement."""


def from_hf_config(hf: Mapping[str, Any], source: str = "config.json", **changes: Any
                   ) -> ModelConfig:
    """A ModelConfig from a parsed HF Qwen3 `config.json`; `source` names the file in errors."""
    model_type = hf.get("model_type")
    architectures = hf.get("architectures") or ["Qwen3ForCausalLM"]
    if model_type != "qwen3" or "Qwen3ForCausalLM" not in architectures:
        raise UnsupportedModelError(
            f"{source}: model_type={model_type!r}, architectures={architectures}; only Qwen3 "
            "dense models are supported (model_type 'qwen3', architecture 'Qwen3ForCausalLM')")
    for flag in ("attention_bias", "use_sliding_window"):
        if hf.get(flag):
            raise UnsupportedModelError(f"{source}: {flag}=true is not supported")
    rope_theta = hf.get("rope_theta")
    rope_parameters = hf.get("rope_parameters") or {}
    if rope_theta is None:
        rope_theta = rope_parameters.get("rope_theta")
    rope_type = rope_parameters.get("rope_type") or (hf.get("rope_scaling") or {}).get("rope_type")
    if rope_type not in (None, "default"):
        raise UnsupportedModelError(f"{source}: rope_type={rope_type!r} is not supported")
    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads")
    missing = [k for k in required if k not in hf]
    if missing or rope_theta is None:
        missing += [] if rope_theta is not None else ["rope_theta (or rope_parameters.rope_theta)"]
        raise ValueError(f"{source}: missing fields {missing}")
    try:
        return ModelConfig(
            vocab_size=int(hf["vocab_size"]),
            embed_dim=int(hf["hidden_size"]),
            mlp_dim=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=int(hf["num_attention_heads"]),
            num_kv_heads=int(hf.get("num_key_value_heads") or hf["num_attention_heads"]),
            head_dim=int(hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]),
            rope_theta=float(rope_theta),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 40_960)),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=tuple(eos) if isinstance(eos := hf.get("eos_token_id"), list) else eos,
        ).replace(**changes)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: {e}") from e


def to_hf_config(cfg: ModelConfig, dtype: str) -> dict[str, Any]:
    """The HF `config.json` of `cfg`, with the weights stored in `dtype`."""
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.embed_dim,
        "intermediate_size": cfg.mlp_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "max_position_embeddings": cfg.max_position_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "use_cache": True,
        "initializer_range": 0.02,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": list(e) if isinstance(e := cfg.eos_token_id, tuple) else e,
        "torch_dtype": dtype,
    }

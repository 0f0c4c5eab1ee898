"""Decoder shapes: a frozen `ModelConfig`, named Qwen3 presets, and the HF `config.json` mapping.

One decoder covers three HF families, told apart by two switches (HF `model_type`):

| family | q/k RMSNorm (`qk_norm`) | q/k/v bias (`qkv_bias`) | examples |
|---|---|---|---|
| `qwen3` | yes | no | Qwen3 |
| `qwen2` | no | yes | Qwen2.5(-Math), DeepSeek-R1-Distill-Qwen |
| `llama` | no | no | Llama 3, DeepSeek-R1-Distill-Llama, SmolLM2 |

All three are pre-norm RMSNorm blocks with GQA attention, half-split rotary embeddings and a
SwiGLU MLP; rotary frequencies may carry Llama 3.1's scaling (`rope_scaling`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

# Checkpointing policies for the layer scan (`ModelConfig.remat`).
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")

# HF model_type -> the architecture transformers builds for it.
FAMILIES = {"qwen3": "Qwen3ForCausalLM", "qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}


@dataclasses.dataclass(frozen=True)
class Llama3RopeScaling:
    """Llama 3.1's rotary frequency scaling (HF `rope_type: "llama3"`): wavelengths longer than
    `original_max_position_embeddings / low_freq_factor` are stretched by `factor`, those shorter
    than `.../ high_freq_factor` kept, and those between interpolated smoothly."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes and numerics of the decoder. Hashable: it is a static argument of jit."""

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
    qk_norm: bool = True  # RMSNorm over each query and key head before rope (Qwen3).
    qkv_bias: bool = False  # Biases on the q, k and v projections (Qwen2).
    rope_scaling: Llama3RopeScaling | None = None  # None: plain rope of `rope_theta`.
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
        if isinstance(self.rope_scaling, Mapping):  # As read back from JSON.
            object.__setattr__(self, "rope_scaling", Llama3RopeScaling(**self.rope_scaling))
        if self.qk_norm and self.qkv_bias:
            raise ValueError("qk_norm and qkv_bias together match no HF architecture; "
                             f"supported families: {FAMILIES}")
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
    def family(self) -> str:
        """The HF `model_type` these switches implement: qwen3, qwen2 or llama."""
        return "qwen3" if self.qk_norm else "qwen2" if self.qkv_bias else "llama"

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


def _rope(hf: Mapping[str, Any], source: str) -> tuple[float, Llama3RopeScaling | None]:
    """(theta, scaling) from either layout: transformers 5's `rope_parameters`, or the older
    top-level `rope_theta` with an optional `rope_scaling` (whose type key was once `type`)."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    theta = hf.get("rope_theta", params.get("rope_theta"))
    if theta is None:
        raise ValueError(f"{source}: missing field rope_theta (or rope_parameters.rope_theta)")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return float(theta), None
    if rope_type != "llama3":
        raise UnsupportedModelError(f"{source}: rope_type={rope_type!r} is not supported "
                                    "(supported: 'default', 'llama3')")
    fields = [f.name for f in dataclasses.fields(Llama3RopeScaling)]
    missing = [k for k in fields if k not in params]
    if missing:
        raise ValueError(f"{source}: llama3 rope scaling lacks fields {missing}")
    return float(theta), Llama3RopeScaling(
        factor=float(params["factor"]), low_freq_factor=float(params["low_freq_factor"]),
        high_freq_factor=float(params["high_freq_factor"]),
        original_max_position_embeddings=int(params["original_max_position_embeddings"]))


def from_hf_config(hf: Mapping[str, Any], source: str = "config.json", **changes: Any
                   ) -> ModelConfig:
    """A ModelConfig from a parsed HF `config.json` of a Qwen3, Qwen2 or Llama dense model;
    `source` names the file in errors (UnsupportedModelError for what this decoder lacks)."""
    family = hf.get("model_type")
    architectures = hf.get("architectures") or [FAMILIES.get(family)]
    if family not in FAMILIES or FAMILIES[family] not in architectures:
        raise UnsupportedModelError(
            f"{source}: model_type={family!r}, architectures={architectures}; supported: "
            + ", ".join(f"{t!r} ({a})" for t, a in FAMILIES.items()))
    # Flags that would add weights or change attention: Qwen3's and Llama's attention_bias also
    # puts a bias on o_proj, which Qwen2's fixed q/k/v biases do not.
    for flag in ("attention_bias", "mlp_bias", "use_sliding_window"):
        if hf.get(flag):
            raise UnsupportedModelError(f"{source}: {flag}=true is not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise UnsupportedModelError(f"{source}: hidden_act={hf['hidden_act']!r}; expected 'silu'")
    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads")
    missing = [k for k in required if k not in hf]
    if missing:
        raise ValueError(f"{source}: missing fields {missing}")
    rope_theta, rope_scaling = _rope(hf, source)
    try:
        return ModelConfig(
            vocab_size=int(hf["vocab_size"]),
            embed_dim=int(hf["hidden_size"]),
            mlp_dim=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=int(hf["num_attention_heads"]),
            num_kv_heads=int(hf.get("num_key_value_heads") or hf["num_attention_heads"]),
            head_dim=int(hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            qk_norm=family == "qwen3",
            qkv_bias=family == "qwen2",
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 40_960)),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=tuple(eos) if isinstance(eos := hf.get("eos_token_id"), list) else eos,
        ).replace(**changes)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: {e}") from e


def to_hf_config(cfg: ModelConfig, dtype: str) -> dict[str, Any]:
    """The HF `config.json` of `cfg` (architecture by `cfg.family`), weights stored in `dtype`.

    Rope is written in the older layout (top-level `rope_theta`, `rope_scaling`), which
    transformers 4 and 5 and other readers all accept."""
    scaling = None if cfg.rope_scaling is None else {
        "rope_type": "llama3", **dataclasses.asdict(cfg.rope_scaling)}
    family_fields = {
        "qwen3": {"attention_bias": False, "use_sliding_window": False},
        "qwen2": {"use_sliding_window": False},
        "llama": {"attention_bias": False, "mlp_bias": False},
    }[cfg.family]
    return {
        "architectures": [FAMILIES[cfg.family]],
        "model_type": cfg.family,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.embed_dim,
        "intermediate_size": cfg.mlp_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rope_theta": cfg.rope_theta,
        "rope_scaling": scaling,
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "max_position_embeddings": cfg.max_position_embeddings,
        **family_fields,
        "attention_dropout": 0.0,
        "use_cache": True,
        "initializer_range": 0.02,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": list(e) if isinstance(e := cfg.eos_token_id, tuple) else e,
        "torch_dtype": dtype,
    }

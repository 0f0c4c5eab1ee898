"""HuggingFace Qwen3 directories <-> (ModelConfig, params).

The mapping is one table: our param name -> HF tensor name, plus how many leading axes of our
array form HF's input dimension (HF stores `[out, in]` matrices; we store `[in, ...out]` with
heads split out). Transposes and reshapes only, so a round trip is bitwise.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from stepgrpo_jax import model, parallel
from stepgrpo_jax.model import ModelConfig, Params

# Our name -> (HF name, with {i} for the layer index; leading axes that form HF's `in`, or 0
# for tensors stored as they are).
_TABLE: dict[str, tuple[str, int]] = {
    "embed_tokens": ("model.embed_tokens.weight", 0),
    "norm": ("model.norm.weight", 0),
    "lm_head": ("lm_head.weight", 1),
    "layers/input_layernorm": ("model.layers.{i}.input_layernorm.weight", 0),
    "layers/q_proj": ("model.layers.{i}.self_attn.q_proj.weight", 1),
    "layers/k_proj": ("model.layers.{i}.self_attn.k_proj.weight", 1),
    "layers/v_proj": ("model.layers.{i}.self_attn.v_proj.weight", 1),
    "layers/q_norm": ("model.layers.{i}.self_attn.q_norm.weight", 0),
    "layers/k_norm": ("model.layers.{i}.self_attn.k_norm.weight", 0),
    "layers/o_proj": ("model.layers.{i}.self_attn.o_proj.weight", 2),
    "layers/post_attention_layernorm": ("model.layers.{i}.post_attention_layernorm.weight", 0),
    "layers/gate_proj": ("model.layers.{i}.mlp.gate_proj.weight", 1),
    "layers/up_proj": ("model.layers.{i}.mlp.up_proj.weight", 1),
    "layers/down_proj": ("model.layers.{i}.mlp.down_proj.weight", 1),
}

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja")


class CheckpointError(ValueError):
    """An HF directory that cannot be read as a Qwen3 model; the message names file and problem."""


def _to_ours(w: np.ndarray, n_in: int, shape: Sequence[int]) -> np.ndarray:
    return w if n_in == 0 else w.T.reshape(shape)


def _to_hf(w: np.ndarray, n_in: int) -> np.ndarray:
    if n_in == 0:
        return w
    return w.reshape(math.prod(w.shape[:n_in]), -1).T


def read_config(path: str) -> ModelConfig:
    """The ModelConfig of an HF directory, with errors that name the file."""
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such model directory")
    config_file = os.path.join(path, "config.json")
    if not os.path.exists(config_file):
        raise CheckpointError(f"{config_file}: missing (an HF model directory needs config.json)")
    try:
        with open(config_file) as f:
            hf_config = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_file}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})"
                              ) from e
    if not isinstance(hf_config, dict):
        raise CheckpointError(f"{config_file}: expected a JSON object")
    return model.from_hf_config(hf_config, source=config_file)


def _weight_files(path: str) -> dict[str, str]:
    """HF tensor name -> safetensors file, from the index or the single file."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a safetensors index with a weight_map ({e})"
                                  ) from e
        return {name: os.path.join(path, file) for name, file in weight_map.items()}
    single = os.path.join(path, "model.safetensors")
    if not os.path.exists(single):
        others = [f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth"))]
        hint = f" (found {others}: convert them to safetensors)" if others else ""
        raise CheckpointError(f"{path}: no weights: neither model.safetensors nor "
                              f"model.safetensors.index.json{hint}")
    try:
        with safe_open(single, framework="np") as f:
            return dict.fromkeys(f.keys(), single)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{single}: unreadable safetensors file ({e})") from e


def load_pretrained(path: str, dtype: Any = jnp.float32, mesh: Mesh | None = None
                    ) -> tuple[ModelConfig, Params]:
    """Reads an HF Qwen3 directory (single-file or sharded safetensors).

    `dtype` casts every tensor (None keeps the stored dtype). With a `mesh`, each param is
    placed with its logical-axis sharding; every process reads only what its devices hold.
    """
    cfg = read_config(path)
    files = _weight_files(path)
    if dtype is None:
        first = next(iter(files.items()), None)
        with safe_open(first[1], framework="np") as f:
            dtype = f.get_slice(first[0]).get_dtype()
        dtype = {"F32": "float32", "BF16": "bfloat16"}.get(dtype, dtype)
    dtype = jnp.dtype(dtype)
    cfg = cfg.replace(dtype=dtype.name, param_dtype=dtype.name)
    specs = model.param_specs(cfg)
    expected = {name for key, (name, _) in _TABLE.items() if _lookup(specs, key) is not None
                for name in _layer_names(name, cfg.num_layers)}
    unknown = sorted(set(files) - expected - {"lm_head.weight"})
    if unknown:
        more = " ..." if len(unknown) > 5 else ""
        raise CheckpointError(f"{path}: unexpected tensors {unknown[:5]}{more}; "
                              "not a Qwen3 dense checkpoint")
    handles: dict[str, Any] = {}

    def read(name: str, shape: Sequence[int]) -> np.ndarray:
        if name not in files:
            where = "model.safetensors.index.json" if len(set(files.values())) > 1 else \
                "model.safetensors"
            raise CheckpointError(f"{os.path.join(path, where)}: missing tensor {name}")
        file = files[name]
        if file not in handles:
            handles[file] = safe_open(file, framework="np")
        w = handles[file].get_tensor(name)
        if tuple(w.shape) != tuple(shape):
            raise CheckpointError(f"{file}: tensor {name} has shape {list(w.shape)}, expected "
                                  f"{list(shape)} from config.json")
        return w

    def load(key: str, spec) -> jax.Array:
        name, n_in = _TABLE[key]
        if key.startswith("layers/"):
            hf_shape = _hf_shape(spec.shape[1:], n_in)
            w = np.stack([_to_ours(read(name.format(i=i), hf_shape), n_in, spec.shape[1:])
                          for i in range(cfg.num_layers)])
        else:
            w = _to_ours(read(name, _hf_shape(spec.shape, n_in)), n_in, spec.shape)
        w = w.astype(dtype)
        if mesh is None:
            return jnp.asarray(w)
        sharding = parallel.named_sharding(mesh, spec.axes, w.shape)
        return jax.make_array_from_callback(w.shape, sharding, lambda idx: w[idx])

    try:
        params = _map_specs(specs, load)
    finally:
        for h in handles.values():
            h.__exit__(None, None, None)
    return cfg, params


def _hf_shape(shape: Sequence[int], n_in: int) -> tuple[int, ...]:
    if n_in == 0:
        return tuple(shape)
    return (math.prod(shape[n_in:]), math.prod(shape[:n_in]))


def _layer_names(name: str, num_layers: int) -> list[str]:
    return [name.format(i=i) for i in range(num_layers)] if "{i}" in name else [name]


def _lookup(tree: Params, key: str):
    """The leaf of a nested dict at a `_TABLE` key such as `layers/q_proj`, or None."""
    for part in key.split("/"):
        if part not in tree:
            return None
        tree = tree[part]
    return tree


def _map_specs(specs: Params, fn, prefix: str = "") -> Params:
    """Applies fn(key, spec) to every leaf of the spec tree, keys as in _TABLE."""
    return {name: (_map_specs(sub, fn, f"{prefix}{name}/") if isinstance(sub, dict)
                   else fn(prefix + name, sub)) for name, sub in specs.items()}


def to_hf_tensors(cfg: ModelConfig, params: Params, dtype: Any = None) -> dict[str, np.ndarray]:
    """HF tensor name -> numpy array (gathered to this host), optionally cast to `dtype`."""
    tensors = {}

    def add(key: str, _spec) -> None:
        name, n_in = _TABLE[key]
        w = np.asarray(jax.device_get(_lookup(params, key)))
        if dtype is not None:
            w = w.astype(jnp.dtype(dtype))
        for i, hf_name in enumerate(_layer_names(name, cfg.num_layers)):
            layer = w[i] if "{i}" in name else w
            tensors[hf_name] = np.ascontiguousarray(_to_hf(layer, n_in))

    _map_specs(model.param_specs(cfg), add)
    return tensors


def save_pretrained(cfg: ModelConfig, params: Params, out_dir: str,
                    tokenizer_dir: str | None = None, dtype: Any = None,
                    max_shard_bytes: int = 2 * 1024**3) -> str:
    """Writes an HF Qwen3 directory: safetensors shards (+ index), config.json,
    generation_config.json, and the tokenizer files of `tokenizer_dir` when given.

    `dtype` casts the weights (None keeps the params' dtype). Only process 0 writes.
    """
    tensors = to_hf_tensors(cfg, params, dtype)
    if jax.process_index() != 0:
        return out_dir
    os.makedirs(out_dir, exist_ok=True)
    stored_dtype = next(iter(tensors.values())).dtype.name
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, w in tensors.items():
        if shards[-1] and size + w.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = w
        size += w.nbytes
    metadata = {"format": "pt"}  # transformers requires this marker.
    if len(shards) == 1:
        save_file(shards[0], os.path.join(out_dir, "model.safetensors"), metadata=metadata)
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(out_dir, file), metadata=metadata)
            weight_map.update(dict.fromkeys(shard, file))
        index = {"metadata": {"total_size": sum(w.nbytes for w in tensors.values())},
                 "weight_map": weight_map}
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(model.to_hf_config(cfg, stored_dtype), f, indent=2)
    eos = list(e) if isinstance(e := cfg.eos_token_id, tuple) else e
    generation = {"bos_token_id": cfg.bos_token_id, "eos_token_id": eos, "do_sample": True,
                  "temperature": 0.6, "top_p": 0.95, "top_k": 20}  # Qwen3's thinking settings.
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump(generation, f, indent=2)
    if tokenizer_dir is not None:
        copied = [n for n in TOKENIZER_FILES if os.path.exists(os.path.join(tokenizer_dir, n))]
        if "tokenizer.json" not in copied and "vocab.json" not in copied:
            raise CheckpointError(f"{tokenizer_dir}: no tokenizer files ({TOKENIZER_FILES})")
        for name in copied:
            shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(out_dir, name))
    return out_dir

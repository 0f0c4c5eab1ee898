"""The decoder against transformers' Qwen3ForCausalLM, cached decoding, presets, sharding."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from tiny_models import save_tiny_hf_model

from stepgrpo_jax import hf, model, parallel

# Parity configs: tied/untied, GQA ratio 1 and >1, head_dim != hidden/heads, both rope-θ styles.
PARITY_CONFIGS = {
    "untied_gqa2": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16),
    "tied_mha": dict(num_attention_heads=4, num_key_value_heads=4, head_dim=8,
                     tie_word_embeddings=True),
    "untied_gqa4_headdim": dict(num_attention_heads=8, num_key_value_heads=2, head_dim=12,
                                rope_theta=10_000.0),
    "tied_rope_parameters": dict(num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                                 tie_word_embeddings=True, rope_parameters_style=True),
}


def _hf_dir(tmp_path, name, **overrides):
    rope_parameters_style = overrides.pop("rope_parameters_style", False)
    path = str(tmp_path / name)
    m = save_tiny_hf_model(path, seed=hash(name) % 1000, **overrides)
    if rope_parameters_style:  # transformers-5 layout: θ only inside rope_parameters.
        with open(f"{path}/config.json") as f:
            c = json.load(f)
        theta = c.pop("rope_theta", None) or c["rope_parameters"]["rope_theta"]
        c["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
        with open(f"{path}/config.json", "w") as f:
            json.dump(c, f)
    return path, m


def _torch_logits(m, ids, mask=None):
    with torch.no_grad():
        kw = {} if mask is None else {"attention_mask": torch.tensor(mask)}
        return m(torch.tensor(ids), **kw).logits.float().numpy()


@pytest.mark.parametrize("name", sorted(PARITY_CONFIGS))
def test_logits_match_transformers(tmp_path, name):
    path, m = _hf_dir(tmp_path, name, **PARITY_CONFIGS[name])
    cfg, params = hf.load_pretrained(path, dtype=jnp.float32)
    assert cfg.tie_word_embeddings == m.config.tie_word_embeddings
    ids = np.random.RandomState(0).randint(0, cfg.vocab_size, (3, 11))
    ours = np.asarray(model.forward(cfg, params, jnp.asarray(ids)))
    diff = np.abs(ours - _torch_logits(m, ids)).max()
    print(f"{name}: max |logit diff| = {diff:.3g}")
    assert diff <= 1e-4


def test_left_padded_batch_matches_unpadded_rows(tmp_path):
    path, m = _hf_dir(tmp_path, "pad", **PARITY_CONFIGS["untied_gqa2"])
    cfg, params = hf.load_pretrained(path)
    rng = np.random.RandomState(1)
    lengths = [9, 4, 6]
    T = max(lengths)
    ids = np.zeros((3, T), np.int64)
    mask = np.zeros((3, T), bool)
    rows = [rng.randint(3, cfg.vocab_size, n) for n in lengths]
    for i, row in enumerate(rows):
        ids[i, T - len(row):] = row
        mask[i, T - len(row):] = True
    padded = np.asarray(model.forward(cfg, params, jnp.asarray(ids), jnp.asarray(mask)))
    for i, row in enumerate(rows):
        alone = _torch_logits(m, row[None])[0]
        diff = np.abs(padded[i, T - len(row):] - alone).max()
        assert diff <= 1e-4, (i, diff)
    # transformers given the same padded batch agrees on the real tokens as well.
    theirs = _torch_logits(m, ids, mask.astype(np.int64))
    assert np.abs((padded - theirs)[mask]).max() <= 1e-4


def test_cached_decoding_equals_full_forward():
    cfg = model.ModelConfig(vocab_size=64, embed_dim=32, mlp_dim=48, num_layers=2, num_heads=4,
                            num_kv_heads=2, head_dim=8)
    params = model.init_params(cfg, jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (2, 10), 0, 64)
    full = model.forward(cfg, params, ids)
    cache = model.init_cache(cfg, 2, 16, jnp.float32)
    prefill_positions = jnp.tile(jnp.arange(6), (2, 1))
    logits, cache = model.forward(cfg, params, ids[:, :6], positions=prefill_positions, cache=cache)
    steps = [logits]
    for t in range(6, 10):
        logits, cache = model.forward(cfg, params, ids[:, t:t + 1],
                                      positions=jnp.full((2, 1), t), cache=cache)
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, 1), full, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_param_and_compute_dtypes(dtype):
    cfg = model.ModelConfig(vocab_size=64, embed_dim=32, mlp_dim=48, num_layers=1, num_heads=2,
                            num_kv_heads=1, head_dim=16, dtype=dtype, param_dtype=dtype)
    params = model.init_params(cfg, jax.random.key(0))
    assert all(p.dtype == jnp.dtype(dtype) for p in jax.tree.leaves(params))
    h, _ = model.hidden_states(cfg, params, jnp.zeros((1, 3), jnp.int32))
    assert h.dtype == jnp.dtype(dtype)
    assert model.forward(cfg, params, jnp.zeros((1, 3), jnp.int32)).dtype == jnp.float32


def test_preset_parameter_counts_equal_hf():
    # HF's published totals (tied embeddings for both).
    assert model.num_params(model.preset("qwen3-0.6b")) == 596_049_920
    assert model.num_params(model.preset("qwen3-1.7b")) == 1_720_574_976


@pytest.mark.parametrize("name", ["qwen3-4b", "qwen3-8b", "qwen3-14b", "qwen3-32b"])
def test_larger_presets_match_transformers_shapes(name):
    """Each preset has the parameter count transformers computes for the same config (on meta)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = model.preset(name)
    hf_config = Qwen3Config(**model.to_hf_config(cfg, "bfloat16"))
    with torch.device("meta"):
        hf_model = Qwen3ForCausalLM(hf_config)
    assert model.num_params(cfg) == sum(p.numel() for p in hf_model.parameters())


def test_sharded_load_equals_one_device(tmp_path):
    path, _ = _hf_dir(tmp_path, "shard", **PARITY_CONFIGS["untied_gqa2"])
    cfg, params = hf.load_pretrained(path)
    ids = jnp.asarray(np.random.RandomState(2).randint(0, cfg.vocab_size, (4, 7)))
    expected = model.forward(cfg, params, ids)

    mesh = parallel.make_mesh((2, 2, 2))
    cfg, sharded = hf.load_pretrained(path, mesh=mesh)
    q = sharded["layers"]["q_proj"]
    assert len(q.sharding.device_set) == 8
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    with jax.set_mesh(mesh):
        batch = jax.device_put(ids, parallel.named_sharding(mesh, ("act_batch", None), ids.shape))
        logits = jax.jit(lambda p, x: model.forward(cfg, p, x))(sharded, batch)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), atol=1e-5)


def test_logical_rules_drop_axes_that_do_not_divide():
    mesh = parallel.make_mesh((2, 2, 2))
    spec = parallel.logical_to_spec(("act_batch", "kv_heads"), (2, 3), mesh)
    assert spec == jax.sharding.PartitionSpec("data", None)
    with pytest.raises(KeyError, match="no sharding rule"):
        parallel.logical_to_spec(("nonsense",))
    with pytest.raises(ValueError, match="needs 4 devices, 8 available"):
        parallel.make_mesh((2, 2, 1))

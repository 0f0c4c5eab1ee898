"""The decoder against transformers' Qwen3ForCausalLM, blockwise = dense attention, cached
decoding, presets, sharding rules and initialisation."""

import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from tiny_models import save_tiny_hf_model

from stepgrpo_jax import hf, model, parallel
from stepgrpo_jax.model import qwen3

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
    theirs = _torch_logits(m, ids)
    for block in (0, 4):  # Dense, and blockwise with a block that does not divide T.
        ours = np.asarray(model.forward(cfg.replace(attention_block=block), params, ids))
        diff = np.abs(ours - theirs).max()
        print(f"{name}, attention_block={block}: max |logit diff| = {diff:.3g}")
        assert diff <= 1e-4


@pytest.mark.parametrize("block", [0, 4])
def test_left_padded_batch_matches_unpadded_rows(tmp_path, block):
    path, m = _hf_dir(tmp_path, "pad", **PARITY_CONFIGS["untied_gqa2"])
    cfg, params = hf.load_pretrained(path)
    cfg = cfg.replace(attention_block=block)
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


@pytest.mark.parametrize("block", [0, 4])
def test_cached_decoding_equals_full_forward(block):
    cfg = model.ModelConfig(vocab_size=64, embed_dim=32, mlp_dim=48, num_layers=2, num_heads=4,
                            num_kv_heads=2, head_dim=8, attention_block=block)
    params = model.init_params(cfg, jax.random.key(0))
    ids = np.random.RandomState(1).randint(0, 64, (2, 10))
    forward = jax.jit(model.forward, static_argnums=0)
    full = forward(cfg, params, ids)
    cache = model.init_cache(cfg, 2, 16, jnp.float32)
    prefill_positions = np.tile(np.arange(6), (2, 1))
    logits, cache = forward(cfg, params, ids[:, :6], positions=prefill_positions, cache=cache)
    steps = [logits]
    for t in range(6, 10):
        logits, cache = forward(cfg, params, ids[:, t:t + 1], positions=np.full((2, 1), t),
                                cache=cache)
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, 1), full, atol=1e-5)


@pytest.mark.parametrize("block", [0, 4, 5])
def test_decoding_reads_only_the_written_cache(block):
    """Rows at different lengths, rows that feed past the cache (not started or finished), and
    blocks that do not divide the 23 slots: each row's logits equal a full forward over its
    text, and the slots past the last block holding a written slot are NaN: never read."""
    cfg = model.ModelConfig(vocab_size=64, embed_dim=32, mlp_dim=48, num_layers=2, num_heads=4,
                            num_kv_heads=2, head_dim=8, attention_block=block)
    params = model.init_params(cfg, jax.random.key(0))
    ids = np.random.RandomState(2).randint(0, 64, (3, 12))
    full = jax.jit(model.forward, static_argnums=0)(cfg, params, ids)
    S, starts = 23, np.array([0, 5, 2])
    read = -(-12 // block) * block if block else S
    cache = model.init_cache(cfg, 3, S, jnp.float32)
    cache = jax.tree.map(lambda x: x.at[:, :, read:].set(jnp.nan), cache)
    step = jax.jit(model.forward, static_argnums=0)
    for t in range(12 + starts.max()):
        pos = t - starts
        active = (pos >= 0) & (pos < 12)
        feed = ids[np.arange(3), np.clip(pos, 0, 11)]
        positions = np.where(active, pos, S)[:, None]
        logits, cache = step(cfg, params, feed[:, None], positions=positions, cache=cache)
        for row in np.flatnonzero(active):
            np.testing.assert_allclose(logits[row, 0], full[row, pos[row]], atol=1e-5)


def _padded_rows(lengths, T):
    """A left-padded mask [B, T] with the given real lengths (0: a row of padding only)."""
    return np.arange(T)[None, :] >= T - np.asarray(lengths)[:, None]


@pytest.mark.parametrize("block, heads", [(4, (4, 2)), (5, (6, 1))])
def test_blockwise_attention_equals_dense(block, heads):
    """Values and gradients; blocks that do not divide T = 13, left padding, an all-padding row."""
    (N, K), (B, T, H) = heads, (4, 13, 8)
    rng = np.random.RandomState(0)
    q, k, v, d_out = (rng.standard_normal((B, T, n, H)).astype(np.float32) for n in (N, K, K, N))
    mask = _padded_rows([13, 8, 1, 0], T)
    pos = model.default_positions(mask)

    @functools.partial(jax.jit, static_argnums=0)
    @functools.partial(jax.value_and_grad, argnums=(1, 2, 3), has_aux=True)
    def loss(block, q, k, v):
        out = qwen3.attention(q, k, v, pos, pos, mask, block)
        return jnp.sum(out * d_out), out

    (_, dense), dense_grads = loss(0, q, k, v)
    (_, blockwise), grads = loss(block, q, k, v)
    np.testing.assert_allclose(blockwise, dense, atol=1e-5)
    assert not np.asarray(blockwise[3]).any()  # A row that sees no key outputs 0.
    for g, expected in zip(grads, dense_grads, strict=True):
        np.testing.assert_allclose(g, expected, atol=1e-5)


def test_blockwise_model_gradients_equal_dense():
    cfg = model.ModelConfig(vocab_size=64, embed_dim=32, mlp_dim=48, num_layers=1, num_heads=4,
                            num_kv_heads=2, head_dim=8, remat="full")
    params = model.init_params(cfg, jax.random.key(0))
    ids = np.random.RandomState(1).randint(0, 64, (3, 11))
    mask = _padded_rows([11, 7, 3], 11)

    def loss(params, block):
        logits = model.forward(cfg.replace(attention_block=block), params, ids, mask)
        return jnp.sum(jnp.where(mask[..., None], jax.nn.log_softmax(logits), 0.0))

    dense, blockwise = (jax.jit(jax.grad(loss), static_argnums=1)(params, block)
                        for block in (0, 4))
    chex.assert_trees_all_close(blockwise, dense, atol=1e-5)


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


def test_sharded_load_equals_one_device(tmp_path, capfd):
    path, _ = _hf_dir(tmp_path, "shard", **PARITY_CONFIGS["untied_gqa2"])
    cfg, params = hf.load_pretrained(path)
    ids = jnp.asarray(np.random.RandomState(2).randint(0, cfg.vocab_size, (4, 7)))
    expected = model.forward(cfg, params, ids)

    mesh = parallel.make_mesh((2, 2, 2))
    cfg, sharded = hf.load_pretrained(path, mesh=mesh)
    q = sharded["layers"]["q_proj"]
    assert len(q.sharding.device_set) == 8
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    capfd.readouterr()
    with jax.set_mesh(mesh):
        batch = jax.device_put(ids, parallel.named_sharding(mesh, ("act_batch", None), ids.shape))
        for block in (0, 3):
            logits = jax.jit(model.forward, static_argnums=0)(
                cfg.replace(attention_block=block), sharded, batch)
            np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), atol=1e-5)
    # XLA logs (to stderr) when a sharding forces it to gather a whole array, e.g. the embedding.
    assert "Involuntary full rematerialization" not in capfd.readouterr().err


def test_init_params_sharded_equals_one_device():
    cfg = model.ModelConfig(vocab_size=64, embed_dim=32, mlp_dim=48, num_layers=2, num_heads=4,
                            num_kv_heads=2, head_dim=8, tie_word_embeddings=False)
    expected = model.init_params(cfg, jax.random.key(0))
    mesh = parallel.make_mesh((2, 2, 2))
    shardings = parallel.tree_shardings(mesh, model.param_axes(cfg), model.abstract_params(cfg))
    sharded = jax.jit(lambda key: model.init_params(cfg, key), out_shardings=shardings)(
        jax.random.key(0))
    assert jax.tree.map(lambda x: x.sharding, sharded) == shardings
    chex.assert_trees_all_close(sharded, expected, atol=1e-7)  # Same draws, up to fusion.
    weights = np.concatenate([np.ravel(x) for x in jax.tree.leaves(expected) if x.ndim > 2])
    assert abs(weights.std() - 0.02) < 1e-3 and np.all(expected["layers"]["q_norm"] == 1)


def test_logical_rules_drop_axes_that_do_not_divide():
    mesh = parallel.make_mesh((2, 2, 2))
    spec = parallel.logical_to_spec(("act_batch", "kv_heads"), (2, 3), mesh)
    assert spec == jax.sharding.PartitionSpec("data", None)
    with pytest.raises(KeyError, match="no sharding rule"):
        parallel.logical_to_spec(("nonsense",))
    with pytest.raises(ValueError, match="needs 4 devices, 8 available"):
        parallel.make_mesh((2, 2, 1))


def test_logical_rules_context_overrides_defaults():
    mesh = parallel.make_mesh((2, 2, 2))
    assert parallel.logical_to_spec(("embed",), (8,), mesh) == jax.sharding.PartitionSpec("fsdp")
    with parallel.logical_rules({"embed": ("tensor",)}):
        with parallel.logical_rules({"mlp": ()}):  # Nested blocks add to the outer one.
            spec = parallel.logical_to_spec(("embed", "mlp"), (8, 8), mesh)
            assert spec == jax.sharding.PartitionSpec("tensor", None)
        with parallel.logical_rules({"embed": ["data"]}):  # An inner block wins (lists too).
            assert parallel.logical_to_spec(("embed",), (8,), mesh) == \
                jax.sharding.PartitionSpec("data")
        # constrain (inside jit, under the mesh) uses the context too.
        with jax.set_mesh(mesh):
            x = jax.jit(lambda x: parallel.constrain(x * 2, ("embed",)))(jnp.ones(8))
        assert x.sharding.spec == jax.sharding.PartitionSpec("tensor")
    assert parallel.named_sharding(mesh, ("embed",), (8,)).spec == jax.sharding.PartitionSpec(
        "fsdp")

"""The Flax NNX face of the decoder: its state is the functional params, its call `forward`."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from stepgrpo_jax import model
from stepgrpo_jax.model.nnx import Decoder

CONFIGS = {
    "qwen3": model.ModelConfig(vocab_size=64, embed_dim=32, mlp_dim=48, num_layers=2,
                               num_heads=4, num_kv_heads=2, head_dim=8),
    "qwen2_untied": model.ModelConfig(vocab_size=64, embed_dim=32, mlp_dim=48, num_layers=2,
                                      num_heads=4, num_kv_heads=2, head_dim=8, qk_norm=False,
                                      qkv_bias=True, tie_word_embeddings=False),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_split_gives_the_params_pytree(name):
    cfg = CONFIGS[name]
    params = model.init_params(cfg, nnx.Rngs(params=0).params())  # The key the module draws.
    _, state = nnx.split(Decoder(cfg, rngs=nnx.Rngs(params=0)))
    pure = nnx.to_pure_dict(state)
    assert jax.tree.structure(pure) == jax.tree.structure(params)
    chex.assert_trees_all_equal(pure, params)
    specs = nnx.get_partition_spec(state)
    axes = model.param_axes(cfg)
    assert nnx.to_pure_dict(specs) == jax.tree.map(
        lambda a: jax.sharding.PartitionSpec(*a), axes, is_leaf=lambda x: isinstance(x, tuple))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_call_equals_forward_and_grads_equal(name):
    cfg = CONFIGS[name]
    params = jax.tree.map(lambda x: x + 0.01 * jax.random.normal(jax.random.key(1), x.shape),
                          model.init_params(cfg, jax.random.key(0)))  # Biases not all zero.
    decoder = Decoder(cfg, params=params)
    ids = np.random.RandomState(0).randint(0, cfg.vocab_size, (2, 7))
    mask = np.arange(7)[None] >= np.array([[0], [3]])  # A left-padded row.
    expected = model.forward(cfg, params, ids, mask)
    np.testing.assert_array_equal(decoder(ids, mask), expected)
    jitted = jax.jit(model.forward, static_argnums=0)(cfg, params, ids, mask)  # Other fusions.
    np.testing.assert_array_equal(nnx.jit(lambda m, ids, mask: m(ids, mask))(decoder, ids, mask),
                                  jitted)

    def loss(logits):
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    grads = nnx.grad(lambda m: loss(m(ids, mask)))(decoder)
    expected_grads = jax.grad(lambda p: loss(model.forward(cfg, p, ids, mask)))(params)
    chex.assert_trees_all_close(nnx.to_pure_dict(grads), expected_grads, atol=1e-7)


def test_needs_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one of rngs and params"):
        Decoder(CONFIGS["qwen3"])

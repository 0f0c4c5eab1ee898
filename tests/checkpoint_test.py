"""Resuming a train state: the same run restores exactly; another model or optimizer is an
error naming the checkpoint and each difference, never Orbax's traceback."""

import os

import jax
import numpy as np
import optax
import pytest
from grpo_worker import TINY, tiny_params

from stepgrpo_jax import checkpoint, parallel, train_state

OPTIMIZER = train_state.make_optimizer(learning_rate=1e-3)


@pytest.fixture(scope="module")
def mesh():
    return parallel.make_mesh((1, 1, 1), jax.devices()[:1])


@pytest.fixture
def saved(tmp_path, mesh):
    """A checkpoint directory with step 3 of TINY trained by OPTIMIZER."""
    state = train_state.init_train_state(TINY, OPTIMIZER, mesh, params=tiny_params())
    ckpt = checkpoint.Checkpoints(str(tmp_path / "ckpt"), async_save=False)
    checkpoint.save_train_state(ckpt, 3, state, TINY, data_position=7, seed=0)
    ckpt.wait()
    ckpt.close()  # Restored by a new manager, as after a restart.
    return checkpoint.Checkpoints(ckpt.directory, async_save=False), state


def test_the_same_run_restores_exactly(saved, mesh):
    ckpt, state = saved
    fresh = train_state.init_train_state(TINY, OPTIMIZER, mesh, params=tiny_params(seed=1))
    restored, start, position = checkpoint.restore_train_state(ckpt, fresh,
                                                               TINY.replace(remat="full"))
    assert (start, position) == (3, 7)  # remat only changes how the model computes.
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(x, y)


def test_another_model_config_names_each_field(saved, mesh):
    ckpt, _ = saved
    cfg = TINY.replace(num_layers=3, mlp_dim=128)
    fresh = train_state.init_train_state(cfg, OPTIMIZER, mesh, params=tiny_params(cfg=cfg))
    with pytest.raises(checkpoint.CheckpointMismatchError) as e:
        checkpoint.restore_train_state(ckpt, fresh, cfg)
    message = str(e.value)
    assert message.startswith(os.path.join(ckpt.directory, "3") + " holds another model")
    assert "num_layers: checkpoint 2, config 3" in message
    assert "mlp_dim: checkpoint 64, config 128" in message
    assert "embed_dim" not in message


def test_a_checkpoint_from_before_the_family_switches_resumes(tmp_path, mesh, monkeypatch):
    """Fields added to ModelConfig since a save take their defaults; they are no difference."""
    state = train_state.init_train_state(TINY, OPTIMIZER, mesh, params=tiny_params())
    old_fields = ("qk_norm", "qkv_bias", "rope_scaling")
    to_json = checkpoint.config_to_json
    monkeypatch.setattr(checkpoint, "config_to_json", lambda cfg: {
        k: v for k, v in to_json(cfg).items() if k not in old_fields})
    ckpt = checkpoint.Checkpoints(str(tmp_path / "ckpt"), async_save=False)
    checkpoint.save_train_state(ckpt, 3, state, TINY, data_position=7, seed=0)
    ckpt.wait()
    monkeypatch.undo()
    assert not set(old_fields) & set(ckpt.read_meta(3)["model_config"])
    _, start, _ = checkpoint.restore_train_state(ckpt, state, TINY)
    assert start == 3
    ckpt.close()


def test_another_optimizer_names_the_state_that_differs(saved, mesh):
    ckpt, _ = saved
    sgd = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(1e-3, momentum=0.9))
    fresh = train_state.init_train_state(TINY, sgd, mesh, params=tiny_params())
    with pytest.raises(checkpoint.CheckpointMismatchError,
                       match=r"/3: the opt_state differ from this run's .*: 1/0/"):
        checkpoint.restore_train_state(ckpt, fresh, TINY)

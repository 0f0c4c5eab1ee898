"""GRPO: advantages and the loss against NumPy references of SPEC §5, exact micro-batching,
8 devices = 1, and the non-finite guard."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from grpo_worker import TINY, make_batch, tiny_params

from stepgrpo_jax import grpo, parallel, train_state

AGGS = grpo.LOSS_AGGS
MAX_RESPONSE_LEN = 7  # make_batch's completion length: the Dr.GRPO constant.


def _loss_cfg(loss_agg="token-mean", **kw):
    return grpo.LossConfig(loss_agg=loss_agg, max_response_len=MAX_RESPONSE_LEN, **kw)


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


# --- Advantages -------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", grpo.SCALES)
def test_group_advantages_match_numpy(scale):
    rewards = np.random.RandomState(0).rand(4, 5)
    rewards[2] = 0.7  # A group of equal rewards: zero advantage, not a division by zero.
    centred = rewards - rewards.mean(axis=1, keepdims=True)
    std = {"group": rewards.std(axis=1, ddof=1, keepdims=True), "batch": rewards.std(ddof=1),
           "none": None}[scale]
    want = centred if std is None else centred / (std + 1e-6)
    got = grpo.group_advantages(rewards.reshape(-1), group_size=5, scale=scale)
    np.testing.assert_allclose(got, want.reshape(-1), rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(got)[10:15] == 0)


@pytest.mark.parametrize("scale", grpo.SCALES)
@pytest.mark.parametrize("group_size", [2, 3, 5, 8, 16, 64])
@pytest.mark.parametrize("value", [0.1, -0.9, 0.7, 1.2080, 1e-8, -3.3, 123456.789, 0.0, 1 / 3])
def test_equal_rewards_give_exactly_zero_advantage(scale, group_size, value):
    # In float32 eight rewards of 0.1 gave -0.0074 each, five of -0.9 gave +0.056.
    rewards = np.concatenate([np.full(group_size, value, np.float32),
                              np.arange(group_size, dtype=np.float32) ** 2])  # Signal.
    adv = grpo.group_advantages(rewards, group_size, scale)
    assert np.all(adv[:group_size] == 0.0), adv[:group_size]
    assert np.all(adv[group_size:] != 0.0)
    np.testing.assert_array_equal(grpo.equal_reward_groups(rewards, group_size), [True, False])


def test_group_advantages_of_jax_float32_array():
    adv = grpo.group_advantages(jnp.full(8, 0.1), 8)
    assert adv.dtype == np.float64 and np.all(adv == 0.0)


def test_equal_reward_groups_counts_exactly_the_flat_groups():
    rewards = np.array([0.1] * 5 + [0.1, 0.1, 0.1, 0.1, 0.1 + 1e-12] + [-0.9] * 5 + [1, 0, 1, 0, 1])
    np.testing.assert_array_equal(grpo.equal_reward_groups(rewards, 5),
                                  [True, False, True, False])


def test_group_advantages_reject_bad_layouts():
    with pytest.raises(ValueError, match="groups of 3"):
        grpo.group_advantages(np.zeros(10), group_size=3)
    with pytest.raises(ValueError, match="scale"):
        grpo.group_advantages(np.zeros(10), group_size=5, scale="std")
    with pytest.raises(ValueError, match="non-finite"):
        grpo.group_advantages(np.array([0.0, np.nan]), group_size=2)


@pytest.mark.parametrize("logp, ref, want", [
    (-1.5, 10.5, 10.0),  # e^12 - 13 = 162,741.8 unclamped
    (-30.0, 0.0, 10.0),  # beyond the log-ratio clip too
    (0.0, 2.0, float(np.exp(2.0) - 3.0)),  # 4.389: inside the clamp, unchanged
    (2.0, 0.0, float(np.exp(-2.0) + 1.0)),  # k3 >= 0 and small for negative log-ratios
    (-1.0, -1.0, 0.0),
])
def test_k3_kl_is_clamped_per_token(logp, ref, want):
    got = grpo.kl_penalty(jnp.array([logp]), jnp.array([ref]), grpo.LossConfig())
    np.testing.assert_allclose(np.asarray(got), [want], rtol=1e-6)


@pytest.mark.parametrize("bad", [dict(eps_low=1.0), dict(dual_clip=1.0), dict(kl_coef=-1.0),
                                 dict(kl_estimator="k4"), dict(loss_agg="sum"),
                                 dict(loss_agg="seq-mean-token-sum-norm")])
def test_loss_config_rejects_bad_fields(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        grpo.LossConfig(**bad)


# --- The loss against NumPy -------------------------------------------------------------------

def _numpy_loss(logp, old, ref, adv, mask, entropy, cfg):
    """SPEC §5 written directly, token by token and row by row, in float64."""
    logp, old, ref, entropy = (np.asarray(x, np.float64) for x in (logp, old, ref, entropy))
    ratio = np.exp(np.clip(logp - old, -cfg.logratio_clip, cfg.logratio_clip))
    a = np.asarray(adv, np.float64)[:, None]
    pg = np.maximum(-a * ratio, -a * np.clip(ratio, 1 - cfg.eps_low, 1 + cfg.eps_high))
    dual = (a < 0) & (pg > -a * cfg.dual_clip)
    pg = np.where(dual, -a * cfg.dual_clip, pg)
    d = logp - ref
    k3_d = np.clip(-d, -cfg.logratio_clip, cfg.logratio_clip)
    kl = {"k1": d, "k2": 0.5 * d * d,
          "k3": np.clip(np.exp(k3_d) - k3_d - 1, -10, 10)}[cfg.kl_estimator]

    def aggregate(x):
        if cfg.loss_agg == "token-mean":
            return (x * mask).sum() / mask.sum()
        seqs = [(x[b] * mask[b]).sum() / (mask[b].sum() if cfg.loss_agg ==
                                           "seq-mean-token-mean" else cfg.max_response_len)
                for b in range(len(mask)) if mask[b].sum() > 0]
        return np.mean(seqs)

    on = mask > 0
    low, high = (a < 0) & (ratio < 1 - cfg.eps_low), (a > 0) & (ratio > 1 + cfg.eps_high)
    assert low[on].any() and high[on].any() and dual[on].any(), "inputs miss a clip case"
    return {
        "loss": aggregate(pg + cfg.kl_coef * kl), "pg_loss": aggregate(pg), "kl": aggregate(kl),
        "entropy": entropy[on].mean(), "clip_frac_low": low[on].mean(),
        "clip_frac_high": high[on].mean(), "clip_frac": (low | high)[on].mean(),
        "dual_clip_frac": dual[on].mean(), "ratio_mean": ratio[on].mean(),
        "ratio_min": ratio[on].min(), "ratio_max": ratio[on].max(),
    }


def _random_loss_inputs(seed=0, B=6, T=10):
    rng = np.random.RandomState(seed)
    mask = (rng.rand(B, T) < 0.7).astype(np.float32)
    mask[:, :2] = 0  # Prompt positions.
    mask[1] = 0  # A padding row: no loss token.
    logp = -rng.rand(B, T).astype(np.float32) * 4
    old = (logp + rng.randn(B, T) * 0.8).astype(np.float32)  # Ratios on both sides of the clip.
    ref = (logp + rng.randn(B, T) * 0.5).astype(np.float32)
    old[0, 3], old[2, 4], ref[3, 5] = logp[0, 3] + 25, logp[2, 4] - 25, logp[3, 5] + 30
    mask[0, 3] = mask[2, 4] = mask[3, 5] = 1  # Log-ratios beyond the ±20 clamp.
    adv = np.array([1.0, 0.5, -1.2, 0.8, -0.4, -2.0], np.float32)
    entropy = rng.rand(B, T).astype(np.float32) * 3
    batch = {"loss_mask": mask, "advantages": adv, "old_logprobs": old * mask,
             "ref_logprobs": ref * mask}
    return logp, entropy, batch


@pytest.mark.parametrize("kl_estimator", grpo.KL_ESTIMATORS)
@pytest.mark.parametrize("loss_agg", AGGS)
def test_policy_loss_matches_numpy(loss_agg, kl_estimator):
    cfg = _loss_cfg(loss_agg, kl_estimator=kl_estimator)
    logp, entropy, batch = _random_loss_inputs()
    want = _numpy_loss(logp, batch["old_logprobs"], batch["ref_logprobs"], batch["advantages"],
                       batch["loss_mask"], entropy, cfg)
    loss, got = grpo.policy_loss(jnp.asarray(logp), batch, cfg, jnp.asarray(entropy))
    assert set(got) == set(want) and float(loss) == float(got["loss"])
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=2e-6, atol=1e-7, err_msg=k)


def test_policy_loss_without_kl_needs_no_reference():
    logp, _, batch = _random_loss_inputs()
    del batch["ref_logprobs"]
    loss, metrics = grpo.policy_loss(jnp.asarray(logp), batch, _loss_cfg(kl_coef=0.0))
    assert "kl" not in metrics and float(loss) == float(metrics["pg_loss"])


# --- Chunked log-probs ------------------------------------------------------------------------

# --- Exact micro-batching ---------------------------------------------------------------------

@pytest.mark.parametrize("loss_agg", AGGS)
def test_microbatches_give_the_same_gradient(loss_agg):
    cfg = _loss_cfg(loss_agg)
    params = tiny_params()
    batch = make_batch(4)  # Its last row has no loss token: one micro-batch is empty.

    @jax.jit
    def one_and_four(p, b):
        return [grpo.loss_and_grads(TINY, cfg, p, b, n, chunk_size=4) for n in (1, 4)]

    (grads1, metrics1), (grads4, metrics4) = one_and_four(params, batch)
    diff = _max_diff(grads1, grads4)
    print(f"{loss_agg}: max |grad 1x4 - grad 4x1| = {diff:.2g}")
    assert diff <= 1e-6 and _max_diff(metrics1, metrics4) <= 1e-6
    assert float(optax.tree.norm(grads1)) > 1e-3  # Not trivially zero.


# --- The update: 8 devices = 1, and the non-finite guard -------------------------------------

OPTIMIZER = train_state.make_optimizer(learning_rate=1e-3)


def _update_on(mesh_shape, devices):
    mesh = parallel.make_mesh(mesh_shape, devices)
    update = grpo.make_update_step(TINY, _loss_cfg(), OPTIMIZER, mesh, num_microbatches=2,
                                   chunk_size=4)
    return mesh, update


@pytest.fixture(scope="module")
def one_device():
    return _update_on((1, 1, 1), jax.devices()[:1])


def test_sharded_update_matches_one_device(one_device):
    batch = make_batch(8)
    results = []
    for mesh, update in (one_device, _update_on((2, 2, 2), jax.devices())):
        state = train_state.init_train_state(TINY, OPTIMIZER, mesh, params=tiny_params())
        before = jax.device_get(state.params)
        state, metrics = update(state, batch)
        assert int(metrics["skipped"]) == 0 and int(state.step) == 1
        assert float(metrics["lr"]) == pytest.approx(1e-3)
        results.append((jax.device_get(metrics), jax.device_get(state.params)))
    assert results[1][1]["layers"]["q_proj"].dtype == np.float32
    assert _max_diff(before, results[0][1]) > 1e-4  # The params moved.
    metric_diff, param_diff = (_max_diff(results[0][i], results[1][i]) for i in (0, 1))
    print(f"8 devices vs 1: max |metric diff| = {metric_diff:.2g}, "
          f"max |param diff| = {param_diff:.2g}")
    # Not bitwise: sharded matmuls and all-reduces sum in another order (the gradients agree to
    # ~2e-7), and Adam's first step, lr * g / (|g| + eps), turns that rounding of near-zero
    # gradient entries into update differences of up to ~1e-3 * lr.
    assert metric_diff <= 1e-5 and param_diff <= 1e-2 * 1e-3


@pytest.mark.parametrize("field", ["advantages", "old_logprobs"])
def test_nonfinite_batch_skips_the_update(one_device, field):
    mesh, update = one_device
    batch = make_batch(8)
    row, col = 0, int(np.argmax(batch["loss_mask"][0]))
    batch[field][(row, col)[:batch[field].ndim]] = np.nan
    state = train_state.init_train_state(TINY, OPTIMIZER, mesh, params=tiny_params())
    before = jax.device_get(state)
    state, metrics = update(state, batch)
    assert int(metrics["skipped"]) == 1 and not np.isfinite(float(metrics["loss"]))
    after = jax.device_get(state)
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(x, y)  # Bitwise: NaN-free and untouched.


# --- Mini-batches ---------------------------------------------------------------

def test_split_minibatches_is_strided():
    batch = {"x": jnp.arange(12).reshape(6, 2), "a": jnp.arange(6)}
    parts = grpo.split_minibatches(batch, 3)
    assert [p["a"].tolist() for p in parts] == [[0, 3], [1, 4], [2, 5]]
    assert parts[1]["x"].tolist() == [[2, 3], [8, 9]]


def test_bf16_compute_keeps_float32_master_weights(one_device):
    cfg = TINY.replace(dtype="bfloat16", remat="full")
    mesh, _ = one_device
    update = grpo.make_update_step(cfg, _loss_cfg(), OPTIMIZER, mesh, chunk_size=4)
    state = train_state.init_train_state(cfg, OPTIMIZER, mesh, params=tiny_params())
    state, metrics = update(state, make_batch(4))
    assert int(metrics["skipped"]) == 0 and np.isfinite(float(metrics["loss"]))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))

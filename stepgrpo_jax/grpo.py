"""GRPO (SPEC §5): group advantages, the clipped policy loss, its update and the rollout step.

Batch layout (one row per completion; the trainer builds it):
  input_ids       [B, T] int32    prompt (left-padded) then completion (right-padded)
  attention_mask  [B, T] bool     real tokens
  loss_mask       [B, T] float32  1 where input_ids[:, t] is a completion token to learn
  advantages      [B]    float32  one value per completion
  old_logprobs    [B, T] float32  aligned like `token_logprobs` (0 where loss_mask is 0)
  ref_logprobs    [B, T] float32  idem, from the frozen initial params (only if kl_coef > 0)

Every aggregation mode is written as per-token weights whose denominators (token count, sequence
count) come from the whole mini-batch, so the loss of a mini-batch is a plain sum over its
micro-batches: gradient accumulation is exact whatever the split.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from stepgrpo_jax import model, train_state
from stepgrpo_jax.model import ModelConfig, Params

Batch = train_state.Batch
Metrics = train_state.Metrics

SCALES = ("group", "batch", "none")
KL_ESTIMATORS = ("k1", "k2", "k3")
LOSS_AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
K3_CLAMP = 10.0  # Bound of each token's k3 KL value (SPEC §5).


def equal_reward_groups(rewards: np.ndarray, group_size: int) -> np.ndarray:
    """[num_groups] bool: the groups whose rewards are all equal (no learning signal)."""
    r = np.asarray(rewards).reshape(-1, group_size)
    return (r == r[:, :1]).all(axis=1)


def group_advantages(rewards: np.ndarray, group_size: int, scale: str = "group",
                     eps: float = 1e-6) -> np.ndarray:
    """A_i = (R_i - mean_G R) / (std R + eps), rewards [N] laid out group after group; [N] float64.

    The std (Bessel-corrected) is the group's (`scale="group"`), the whole batch's ("batch"),
    or no division at all ("none"). Computed on the host in float64, and a group whose rewards
    are all equal gets exactly 0: otherwise the rounding residue of its mean, divided by a std of
    the same size, becomes a full-size signal (eight rewards of 0.1 gave -0.0074 each in float32).
    """
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r}; expected one of {SCALES}")
    r = np.asarray(rewards, np.float64)
    if r.ndim != 1 or group_size < 2 or r.shape[0] % group_size:
        raise ValueError(f"rewards of shape {r.shape} do not split into groups of "
                         f"{group_size} (need group_size >= 2)")
    if not np.isfinite(r).all():
        raise ValueError(f"non-finite rewards: {r[~np.isfinite(r)][:8]}")
    r = r.reshape(-1, group_size)
    centred = np.where(equal_reward_groups(r, group_size)[:, None], 0.0,
                       r - r.mean(axis=1, keepdims=True))
    if scale == "group":
        centred = centred / (r.std(axis=1, ddof=1, keepdims=True) + eps)
    elif scale == "batch":
        centred = centred / (r.std(ddof=1) + eps)
    return centred.reshape(-1)


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The GRPO loss (SPEC §5). Hashable: a static argument of jit."""

    eps_low: float = 0.2  # Ratio clip below: 1 - eps_low.
    eps_high: float = 0.3  # Ratio clip above: 1 + eps_high (clip-higher).
    dual_clip: float = 3.0  # Bound c on -A*r for negative advantages.
    logratio_clip: float = 20.0  # |log-ratio| bound before exp, so ratios stay finite.
    kl_coef: float = 0.01  # 0 drops the KL term and the reference forward.
    kl_estimator: str = "k3"  # k1: logp-ref; k2: (logp-ref)^2/2; k3 (low_var_kl).
    loss_agg: str = "token-mean"  # One of LOSS_AGGS.
    max_response_len: int | None = None  # Dr.GRPO's constant (seq-mean-token-sum-norm only).

    def __post_init__(self):
        if not 0 <= self.eps_low < 1 or self.eps_high < 0:
            raise ValueError(f"eps_low={self.eps_low} must be in [0, 1) and "
                             f"eps_high={self.eps_high} >= 0")
        if not self.dual_clip > 1:
            raise ValueError(f"dual_clip={self.dual_clip} must be > 1")
        if not self.logratio_clip > 0 or self.kl_coef < 0:
            raise ValueError(f"logratio_clip={self.logratio_clip} must be > 0 and "
                             f"kl_coef={self.kl_coef} >= 0")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator={self.kl_estimator!r}; expected one of "
                             f"{KL_ESTIMATORS}")
        if self.loss_agg not in LOSS_AGGS:
            raise ValueError(f"loss_agg={self.loss_agg!r}; expected one of {LOSS_AGGS}")
        if self.loss_agg == "seq-mean-token-sum-norm" and not (self.max_response_len or 0) > 0:
            raise ValueError("loss_agg='seq-mean-token-sum-norm' needs max_response_len > 0, "
                             f"got {self.max_response_len}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LossConfig:
        """The fields of `config.grpo` named like this class's; Dr.GRPO's constant is the
        response budget `config.sampling.max_new_tokens`."""
        grpo = config["grpo"]
        return cls(**{f.name: grpo[f.name] for f in dataclasses.fields(cls) if f.name in grpo},
                   max_response_len=config["sampling"]["max_new_tokens"])


# ---------------------------------------------------------------------------------------------
# The loss.
# ---------------------------------------------------------------------------------------------

def kl_penalty(logp: jax.Array, ref_logp: jax.Array, cfg: LossConfig) -> jax.Array:
    """Per-token estimate of KL(policy || reference) from sampled-token log-probs; k3 is
    clamped to [-K3_CLAMP, K3_CLAMP]."""
    if cfg.kl_estimator == "k1":
        return logp - ref_logp
    if cfg.kl_estimator == "k2":
        return 0.5 * jnp.square(logp - ref_logp)
    d = jnp.clip(ref_logp - logp, -cfg.logratio_clip, cfg.logratio_clip)
    # Clamped per token as verl's low_var_kl does, so that one token far from the reference
    # (log-ratio 12: e^12 - 13 = 162,741.8 before the clamp) cannot dominate the update.
    return jnp.clip(jnp.exp(d) - d - 1.0, -K3_CLAMP, K3_CLAMP)


def aggregation_totals(loss_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Denominators of the aggregation: loss tokens, and sequences with at least one."""
    return loss_mask.sum(), (loss_mask.sum(axis=-1) > 0).sum().astype(jnp.float32)


def _agg_weights(loss_mask, cfg: LossConfig, num_tokens, num_seqs):
    """Per-token weights w with loss = sum(w * per-token loss)."""
    if cfg.loss_agg == "token-mean":
        return loss_mask / jnp.maximum(num_tokens, 1.0)
    if cfg.loss_agg == "seq-mean-token-mean":
        seq_norm = jnp.maximum(loss_mask.sum(axis=-1, keepdims=True), 1.0)
    else:  # seq-mean-token-sum-norm (Dr.GRPO): a constant, so long answers are not favoured.
        seq_norm = float(cfg.max_response_len)
    return loss_mask / seq_norm / jnp.maximum(num_seqs, 1.0)


def policy_loss(logp: jax.Array, batch: Batch, cfg: LossConfig,
                entropy: jax.Array | None = None,
                totals: tuple[jax.Array, jax.Array] | None = None) -> tuple[jax.Array, Metrics]:
    """Clipped surrogate + KL, aggregated per `cfg.loss_agg`, and the metrics.

    `totals` (from `aggregation_totals` of the whole mini-batch) makes the loss and every metric
    but ratio_min/ratio_max of a micro-batch its additive share of the mini-batch's value.
    """
    mask = batch["loss_mask"]
    num_tokens, num_seqs = aggregation_totals(mask) if totals is None else totals
    adv = batch["advantages"][:, None]  # [B, 1]
    log_ratio = jnp.clip(logp - batch["old_logprobs"], -cfg.logratio_clip, cfg.logratio_clip)
    ratio = jnp.exp(log_ratio)
    clipped = jnp.maximum(-adv * ratio,
                          -adv * jnp.clip(ratio, 1 - cfg.eps_low, 1 + cfg.eps_high))
    # Dual clip: with A < 0 a huge ratio would push the loss without bound; cap it at -A*c.
    pg = jnp.where(adv < 0, jnp.minimum(clipped, -adv * cfg.dual_clip), clipped)

    w = _agg_weights(mask, cfg, num_tokens, num_seqs)
    token_w = mask / jnp.maximum(num_tokens, 1.0)

    def token_mean(x):
        return jnp.sum(token_w * x)

    m = {"pg_loss": jnp.sum(w * pg)}
    loss = m["pg_loss"]
    if cfg.kl_coef > 0:
        m["kl"] = jnp.sum(w * kl_penalty(logp, batch["ref_logprobs"], cfg))
        loss = loss + cfg.kl_coef * m["kl"]
    if entropy is not None:
        m["entropy"] = token_mean(entropy)
    m["clip_frac_low"] = token_mean((adv < 0) & (ratio < 1 - cfg.eps_low))
    m["clip_frac_high"] = token_mean((adv > 0) & (ratio > 1 + cfg.eps_high))
    m["clip_frac"] = m["clip_frac_low"] + m["clip_frac_high"]
    m["dual_clip_frac"] = token_mean((adv < 0) & (clipped > -adv * cfg.dual_clip))
    m["ratio_mean"] = token_mean(ratio)
    m["ratio_min"] = jnp.min(jnp.where(mask > 0, ratio, jnp.inf))
    m["ratio_max"] = jnp.max(jnp.where(mask > 0, ratio, -jnp.inf))
    m["loss"] = loss
    return loss, m


# ---------------------------------------------------------------------------------------------
# Micro-batches and gradients.
# ---------------------------------------------------------------------------------------------

def _combine(stacked: Metrics) -> Metrics:
    """Metrics of the micro-batches ([n] each) -> the mini-batch's."""
    reduce = {"ratio_min": jnp.min, "ratio_max": jnp.max}
    return {k: reduce.get(k, jnp.sum)(v) for k, v in stacked.items()}


def loss_and_grads(model_cfg: ModelConfig, loss_cfg: LossConfig, params: Params, batch: Batch,
                   num_microbatches: int = 1, chunk_size: int = 512) -> tuple[Params, Metrics]:
    """Float32 gradient of the mini-batch loss, accumulated over `num_microbatches` parts."""
    totals = aggregation_totals(batch["loss_mask"])

    def micro_loss(p, mb):
        logp, entropy = model.token_logprobs(model_cfg, p, mb["input_ids"],
                                             mb["attention_mask"], chunk_size)
        return policy_loss(logp, mb, loss_cfg, jax.lax.stop_gradient(entropy), totals)

    grad_fn = jax.grad(micro_loss, has_aux=True)
    to_f32 = functools.partial(jax.tree.map, lambda g: g.astype(jnp.float32))
    if num_microbatches == 1:
        grads, metrics = grad_fn(params, batch)
        return to_f32(grads), metrics

    def body(acc, mb):
        grads, metrics = grad_fn(params, mb)
        return jax.tree.map(jnp.add, acc, to_f32(grads)), metrics

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    grads, stacked = jax.lax.scan(body, zeros, train_state.split_rows(batch, num_microbatches))
    return grads, _combine(stacked)


def make_update_step(model_cfg: ModelConfig, loss_cfg: LossConfig,
                     optimizer: optax.GradientTransformation, mesh: Mesh, *,
                     num_microbatches: int = 1, chunk_size: int = 512) -> train_state.StepFn:
    """One jitted GRPO optimiser update on a mini-batch (`train_state.make_train_step` over
    `loss_and_grads`); a non-finite loss or gradient skips it."""
    grad_fn = functools.partial(loss_and_grads, model_cfg, loss_cfg,
                                num_microbatches=num_microbatches, chunk_size=chunk_size)
    return train_state.make_train_step(grad_fn, model_cfg, optimizer, mesh)


# ---------------------------------------------------------------------------------------------
# A rollout step.
# ---------------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnums=1)
def split_minibatches(batch: Batch, num_minibatches: int) -> tuple[Batch, ...]:
    """The K mini-batches of a rollout batch; mini-batch k holds rows k, k+K, k+2K, ..."""
    parts = train_state.split_rows(batch, num_minibatches)
    return tuple(jax.tree.map(lambda x, k=k: x[k], parts) for k in range(num_minibatches))


def train_on_rollout(update: train_state.StepFn,
                     compute_logprobs: Callable[[Params, Batch], jax.Array],
                     state: train_state.TrainState, batch: Batch, num_minibatches: int,
                     ref_params: Params | None = None
                     ) -> tuple[train_state.TrainState, list[Metrics]]:
    """One rollout step: old (and, given `ref_params`, reference) log-probs, then K updates.

    `batch` needs input_ids, attention_mask, loss_mask and advantages. Pass `ref_params`
    exactly when the loss has kl_coef > 0.
    """
    batch = dict(batch, old_logprobs=compute_logprobs(state.params, batch))
    if ref_params is not None:
        batch["ref_logprobs"] = compute_logprobs(ref_params, batch)
    metrics = []
    for minibatch in split_minibatches(batch, num_minibatches):
        state, m = update(state, minibatch)
        metrics.append(m)
    return state, metrics


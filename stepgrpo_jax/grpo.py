"""GRPO (SPEC §5): group advantages, the clipped policy loss, and the jitted, sharded update.

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
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from stepgrpo_jax import model, parallel
from stepgrpo_jax.model import ModelConfig, Params

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]

SCALES = ("group", "batch", "none")
KL_ESTIMATORS = ("k1", "k2", "k3")
LOSS_AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
SCHEDULES = ("constant", "cosine", "linear")


def group_advantages(rewards: jax.Array, group_size: int, scale: str = "group",
                     eps: float = 1e-6) -> jax.Array:
    """A_i = (R_i - mean_G R) / (std R + eps), rewards laid out group after group.

    The std (Bessel-corrected) is the group's (`scale="group"`), the whole batch's ("batch"),
    or no division at all ("none").
    """
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r}; expected one of {SCALES}")
    if group_size < 2 or rewards.shape[0] % group_size:
        raise ValueError(f"{rewards.shape[0]} rewards do not split into groups of "
                         f"{group_size} (need group_size >= 2)")
    r = jnp.asarray(rewards, jnp.float32).reshape(-1, group_size)
    centred = r - r.mean(axis=1, keepdims=True)
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


# ---------------------------------------------------------------------------------------------
# Log-probs and the loss.
# ---------------------------------------------------------------------------------------------

def token_logprobs(cfg: ModelConfig, params: Params, input_ids: jax.Array,
                   attention_mask: jax.Array, chunk_size: int = 512
                   ) -> tuple[jax.Array, jax.Array]:
    """Log-prob of each token given the tokens before it, and the entropy of that prediction.

    Both [B, T] float32; position 0 has no prediction and gets 0. The float32 logits exist one
    chunk of `chunk_size` positions at a time ([B, chunk, V]), and the backward pass recomputes
    them chunk by chunk, so no [B, T, V] tensor is ever live.
    """
    h, _ = model.hidden_states(cfg, params, input_ids, attention_mask)  # [B, T, D]
    B, T, D = h.shape
    n = -(-(T - 1) // chunk_size)
    pad = n * chunk_size - (T - 1)
    # Hidden state t predicts token t + 1.
    h = jnp.pad(h[:, :-1], ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(input_ids[:, 1:], ((0, 0), (0, pad)))
    h = h.reshape(B, n, chunk_size, D).swapaxes(0, 1)  # [n, B, C, D]
    targets = targets.reshape(B, n, chunk_size).swapaxes(0, 1)  # [n, B, C]

    @jax.checkpoint
    def chunk(xs):
        h_c, t_c = xs
        logits = model.logits_from_hidden(cfg, params, h_c)  # [B, C, V] float32
        lse = jax.nn.logsumexp(logits, axis=-1)
        # A masked sum rather than a gather: it stays local when the vocab is sharded.
        hit = jnp.arange(logits.shape[-1]) == t_c[..., None]
        logp = jnp.sum(jnp.where(hit, logits, 0.0), axis=-1) - lse
        entropy = lse - jnp.sum(jnp.exp(logits - lse[..., None]) * logits, axis=-1)
        return logp, entropy

    logp, entropy = jax.lax.map(chunk, (h, targets))  # [n, B, C] each

    def unchunk(x):
        x = x.swapaxes(0, 1).reshape(B, n * chunk_size)[:, :T - 1]
        return jnp.pad(x, ((0, 0), (1, 0)))

    return unchunk(logp), unchunk(entropy)


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, cfg: LossConfig) -> jax.Array:
    """Per-token estimate of KL(policy || reference) from sampled-token log-probs."""
    if cfg.kl_estimator == "k1":
        return logp - ref_logp
    if cfg.kl_estimator == "k2":
        return 0.5 * jnp.square(logp - ref_logp)
    d = jnp.clip(ref_logp - logp, -cfg.logratio_clip, cfg.logratio_clip)
    return jnp.exp(d) - d - 1.0


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

def _split_rows(tree, n: int):
    """[B, ...] -> [n, B/n, ...] where part k holds rows k, k+n, k+2n, ...

    Strided rather than contiguous: with the batch sharded in contiguous blocks, every device
    keeps its own rows in every part, so splitting moves no data.
    """
    def split(x):
        if x.shape[0] % n:
            raise ValueError(f"batch of {x.shape[0]} rows does not split into {n} parts")
        x = x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)
        return parallel.constrain(x, (None, "act_batch") + (None,) * (x.ndim - 2))
    return jax.tree.map(split, tree)


def _combine(stacked: Metrics) -> Metrics:
    """Metrics of the micro-batches ([n] each) -> the mini-batch's."""
    reduce = {"ratio_min": jnp.min, "ratio_max": jnp.max}
    return {k: reduce.get(k, jnp.sum)(v) for k, v in stacked.items()}


def loss_and_grads(model_cfg: ModelConfig, loss_cfg: LossConfig, params: Params, batch: Batch,
                   num_microbatches: int = 1, chunk_size: int = 512) -> tuple[Params, Metrics]:
    """Float32 gradient of the mini-batch loss, accumulated over `num_microbatches` parts."""
    totals = aggregation_totals(batch["loss_mask"])

    def micro_loss(p, mb):
        logp, entropy = token_logprobs(model_cfg, p, mb["input_ids"], mb["attention_mask"],
                                       chunk_size)
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
    grads, stacked = jax.lax.scan(body, zeros, _split_rows(batch, num_microbatches))
    return grads, _combine(stacked)


# ---------------------------------------------------------------------------------------------
# Optimiser and train state.
# ---------------------------------------------------------------------------------------------

def make_schedule(learning_rate: float, schedule: str = "constant", warmup_steps: int = 0,
                  total_steps: int | None = None) -> optax.Schedule:
    """Linear warm-up from 0, then constant, cosine or linear decay to 0 at `total_steps`."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r}; expected one of {SCHEDULES}")
    if schedule == "constant":
        decay = optax.constant_schedule(learning_rate)
    elif total_steps is None or total_steps <= warmup_steps:
        raise ValueError(f"schedule={schedule!r} needs total_steps > warmup_steps="
                         f"{warmup_steps}, got {total_steps}")
    elif schedule == "cosine":
        decay = optax.cosine_decay_schedule(learning_rate, total_steps - warmup_steps)
    else:
        decay = optax.linear_schedule(learning_rate, 0.0, total_steps - warmup_steps)
    if warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.join_schedules([warmup, decay], [warmup_steps])


def make_optimizer(learning_rate: float = 1e-6, weight_decay: float = 0.01,
                   grad_clip: float = 1.0, schedule: str = "constant", warmup_steps: int = 0,
                   total_steps: int | None = None) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW (torch defaults) with a learning-rate schedule."""
    lr = make_schedule(learning_rate, schedule, warmup_steps, total_steps)
    # inject_hyperparams records the learning rate of each update in the state (`current_lr`).
    adamw = optax.inject_hyperparams(optax.adamw)(learning_rate=lr, weight_decay=weight_decay)
    return optax.chain(optax.clip_by_global_norm(grad_clip), adamw)


def current_lr(opt_state: optax.OptState) -> jax.Array:
    """The learning rate of the last update, from a `make_optimizer` state."""
    return opt_state[1].hyperparams["learning_rate"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    params: Params
    opt_state: optax.OptState
    step: jax.Array  # [] int32, updates applied (skipped ones do not count).


def _new_state(optimizer: optax.GradientTransformation, params: Params) -> TrainState:
    return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))


def state_shardings(model_cfg: ModelConfig, optimizer: optax.GradientTransformation,
                    mesh: Mesh) -> TrainState:
    """NamedShardings of the train state: optimiser moments follow their params."""
    abstract = jax.eval_shape(functools.partial(_new_state, optimizer),
                              model.abstract_params(model_cfg))
    params = parallel.tree_shardings(mesh, model.param_axes(model_cfg), abstract.params)
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_state = optax.tree_map_params(
        optimizer, lambda _, s: s, abstract.opt_state, params,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, NamedSharding))
    return TrainState(params, opt_state, replicated)


def init_train_state(model_cfg: ModelConfig, optimizer: optax.GradientTransformation,
                     mesh: Mesh, rng: jax.Array | None = None,
                     params: Params | None = None) -> TrainState:
    """The train state born sharded, from `params` when given (copied: e.g. HF weights, which
    can then serve as the KL reference), else from random params drawn with `rng`."""
    if rng is None and params is None:
        raise ValueError("init_train_state needs params or an rng")
    shardings = state_shardings(model_cfg, optimizer, mesh)
    new_state = functools.partial(_new_state, optimizer)
    if params is None:
        init = jax.jit(lambda key: new_state(model.init_params(model_cfg, key)),
                       out_shardings=shardings)
        return init(rng)
    return jax.jit(new_state, out_shardings=shardings)(params)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows over the batch axes; a prefix for every leaf of a batch ([B] or [B, T])."""
    return parallel.named_sharding(mesh, ("act_batch",))


# ---------------------------------------------------------------------------------------------
# Jitted steps.
# ---------------------------------------------------------------------------------------------

def apply_update(state: TrainState, grads: Params, loss: jax.Array,
                 optimizer: optax.GradientTransformation) -> tuple[TrainState, Metrics]:
    """The optimiser step, skipped (state returned unchanged) if the loss or gradient is not
    finite. Metrics: loss, grad_norm, lr, skipped (1 when skipped)."""
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # One NaN would poison Adam's moments for good: keep the old state instead.
    keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(ok, new, old))
    new_state = TrainState(keep(params, state.params), keep(opt_state, state.opt_state),
                           state.step + ok.astype(jnp.int32))
    return new_state, {"loss": loss, "grad_norm": grad_norm, "lr": current_lr(opt_state),
                       "skipped": 1 - ok.astype(jnp.int32)}


def update_step(state: TrainState, batch: Batch, *, model_cfg: ModelConfig,
                loss_cfg: LossConfig, optimizer: optax.GradientTransformation,
                num_microbatches: int = 1, chunk_size: int = 512) -> tuple[TrainState, Metrics]:
    """One GRPO optimiser update on a mini-batch; a non-finite loss or gradient skips it."""
    grads, metrics = loss_and_grads(model_cfg, loss_cfg, state.params, batch,
                                    num_microbatches, chunk_size)
    state, update_metrics = apply_update(state, grads, metrics["loss"], optimizer)
    return state, {**metrics, **update_metrics}


def make_update_step(model_cfg: ModelConfig, loss_cfg: LossConfig,
                     optimizer: optax.GradientTransformation, mesh: Mesh, *,
                     num_microbatches: int = 1, chunk_size: int = 512
                     ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """`update_step` jitted over `mesh`; the state is donated, metrics are device scalars.
    Call it, or `.lower()` it on abstract inputs for ahead-of-time compilation."""
    shardings = state_shardings(model_cfg, optimizer, mesh)
    step = functools.partial(update_step, model_cfg=model_cfg, loss_cfg=loss_cfg,
                             optimizer=optimizer, num_microbatches=num_microbatches,
                             chunk_size=chunk_size)
    return jax.jit(_on_mesh(step, mesh), in_shardings=(shardings, batch_sharding(mesh)),
                   out_shardings=(shardings, NamedSharding(mesh, PartitionSpec())),
                   donate_argnums=0)


def _on_mesh(fn: Callable, mesh: Mesh) -> Callable:
    """`fn` traced with `mesh` as the context that the model's activation constraints read,
    so that its jit runs and lowers without the caller entering `jax.set_mesh`."""
    @functools.wraps(fn)
    def traced(*args):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args)
    return traced


def make_compute_logprobs(model_cfg: ModelConfig, mesh: Mesh, *, num_microbatches: int = 1,
                          chunk_size: int = 512) -> Callable[[Params, Batch], jax.Array]:
    """Jitted `(params, batch) -> log-probs [B, T]`, zeroed where loss_mask is 0 (callable and
    lowerable like `make_update_step`'s).

    For the old log-probs (current params) and the reference ones (frozen initial params).
    """
    def logprobs(params, batch):
        def one(mb):
            logp, _ = token_logprobs(model_cfg, params, mb["input_ids"], mb["attention_mask"],
                                     chunk_size)
            return logp * mb["loss_mask"]

        keys = ("input_ids", "attention_mask", "loss_mask")
        parts = _split_rows({k: batch[k] for k in keys}, num_microbatches)
        out = jax.lax.map(one, parts)  # [n, B/n, T], row k + n*j at [k, j]
        return out.swapaxes(0, 1).reshape(-1, out.shape[-1])

    rows = batch_sharding(mesh)
    param_shardings = parallel.tree_shardings(mesh, model.param_axes(model_cfg),
                                              model.abstract_params(model_cfg))
    return jax.jit(_on_mesh(logprobs, mesh), in_shardings=(param_shardings, rows),
                   out_shardings=rows)


@functools.partial(jax.jit, static_argnums=1)
def split_minibatches(batch: Batch, num_minibatches: int) -> tuple[Batch, ...]:
    """The K mini-batches of a rollout batch; mini-batch k holds rows k, k+K, k+2K, ..."""
    parts = _split_rows(batch, num_minibatches)
    return tuple(jax.tree.map(lambda x, k=k: x[k], parts) for k in range(num_minibatches))


def train_on_rollout(update: Callable[[TrainState, Batch], tuple[TrainState, Metrics]],
                     compute_logprobs: Callable[[Params, Batch], jax.Array],
                     state: TrainState, batch: Batch, num_minibatches: int,
                     ref_params: Params | None = None) -> tuple[TrainState, list[Metrics]]:
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


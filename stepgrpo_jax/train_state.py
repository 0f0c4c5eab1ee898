"""The training machinery that GRPO and supervised training share: the optimiser and its
schedule, the train state (born sharded), the optimiser update, and the jitted step factories.

A step is built from a gradient function `(params, batch) -> (float32 grads, metrics)` holding
a "loss" entry: `make_train_step` adds the optimiser update, jits it over the mesh with explicit
shardings and donates the state. Batches are dicts of arrays whose leading axis is the row.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from stepgrpo_jax import model, parallel
from stepgrpo_jax.model import ModelConfig, Params

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
GradFn = Callable[[Params, Batch], tuple[Params, Metrics]]
StepFn = Callable[["TrainState", Batch], tuple["TrainState", Metrics]]

SCHEDULES = ("constant", "cosine", "linear")


# ---------------------------------------------------------------------------------------------
# Optimiser.
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


def optimizer_from_config(optim: Mapping[str, Any], total_steps: int
                          ) -> optax.GradientTransformation:
    """`make_optimizer` from a `config.optim` section; `total_steps` counts optimiser updates."""
    return make_optimizer(optim["learning_rate"], optim["weight_decay"], optim["grad_clip"],
                          optim["schedule"], optim["warmup_steps"], total_steps)


def current_lr(opt_state: optax.OptState) -> jax.Array:
    """The learning rate of the last update, from a `make_optimizer` state."""
    return opt_state[1].hyperparams["learning_rate"]


# ---------------------------------------------------------------------------------------------
# Train state.
# ---------------------------------------------------------------------------------------------

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


def split_rows(tree, n: int):
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


def make_train_step(grad_fn: GradFn, model_cfg: ModelConfig,
                    optimizer: optax.GradientTransformation, mesh: Mesh) -> StepFn:
    """`(state, batch) -> (state, metrics)`: `grad_fn`'s gradient, then `apply_update`.

    Jitted over `mesh` with the state's shardings; the state is donated and the metrics are
    replicated device scalars (`grad_fn`'s, then those of `apply_update`). Call it, or
    `.lower()` it on abstract inputs for ahead-of-time compilation (tools/aot_compile.py).
    """
    def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        grads, metrics = grad_fn(state.params, batch)
        state, update_metrics = apply_update(state, grads, metrics["loss"], optimizer)
        return state, {**metrics, **update_metrics}

    shardings = state_shardings(model_cfg, optimizer, mesh)
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
    """Jitted `(params, batch) -> log-probs [B, T]`, zeroed where loss_mask is 0, computed in
    `num_microbatches` strided parts (see `split_rows`).

    For GRPO's old log-probs (current params) and reference ones (frozen initial params).
    Callable and lowerable like `make_train_step`'s.
    """
    def logprobs(params, batch):
        def one(mb):
            logp, _ = model.token_logprobs(model_cfg, params, mb["input_ids"],
                                           mb["attention_mask"], chunk_size)
            return logp * mb["loss_mask"]

        keys = ("input_ids", "attention_mask", "loss_mask")
        parts = split_rows({k: batch[k] for k in keys}, num_microbatches)
        out = jax.lax.map(one, parts)  # [n, B/n, T], row k + n*j at [k, j]
        return out.swapaxes(0, 1).reshape(-1, out.shape[-1])

    rows = batch_sharding(mesh)
    param_shardings = parallel.tree_shardings(mesh, model.param_axes(model_cfg),
                                              model.abstract_params(model_cfg))
    return jax.jit(_on_mesh(logprobs, mesh), in_shardings=(param_shardings, rows),
                   out_shardings=rows)

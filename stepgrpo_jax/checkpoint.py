"""Orbax checkpoints: saving and restoring the train state with a JSON record (step, model
config, data positions, seed) per step, the initial model of a run (`initial_model`), and
`load_model` for any model path (HF directory or a checkpoint of ours).

A checkpoint directory holds one folder per step with the items `params`, optionally
`opt_state`, and `meta`. Orbax writes each step to a temporary folder and renames it when
complete, so a crash or a full disk never leaves a half-written step as the latest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import Mesh

from stepgrpo_jax import hf, model, parallel
from stepgrpo_jax.model import ModelConfig, Params
from stepgrpo_jax.train_state import TrainState

if TYPE_CHECKING:
    from stepgrpo_jax.metrics import MetricsWriter


def config_to_json(cfg: ModelConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_json(d: dict[str, Any]) -> ModelConfig:
    d = dict(d)
    if isinstance(d.get("eos_token_id"), list):
        d["eos_token_id"] = tuple(d["eos_token_id"])
    return ModelConfig(**d)


class Checkpoints:
    """A keep-N Orbax manager of training steps (async saves; `wait()` before reading)."""

    def __init__(self, directory: str, max_to_keep: int | None = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                               enable_async_checkpointing=async_save)
        # Handlers named up front, so a reopened manager reads the items' metadata too.
        handlers = {"params": ocp.StandardCheckpointHandler(),
                    "opt_state": ocp.StandardCheckpointHandler(),
                    "meta": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_handlers=handlers)

    @classmethod
    def from_config(cls, ckpt: ml_collections.ConfigDict, workdir: str) -> Checkpoints:
        """The checkpoints of a run: `{workdir}/checkpoints`, kept and saved per `config.ckpt`."""
        return cls(os.path.join(workdir, "checkpoints"), ckpt.max_to_keep, ckpt.async_save)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, params: Params, meta: dict[str, Any], opt_state: Any = None,
             force: bool = False) -> None:
        items = {"params": ocp.args.StandardSave(params), "meta": ocp.args.JsonSave(meta)}
        if opt_state is not None:
            items["opt_state"] = ocp.args.StandardSave(opt_state)
        self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        step = self._step(step)
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
            "meta"]

    def restore(self, step: int | None, abstract_params: Params, abstract_opt_state: Any = None
                ) -> tuple[Params, Any, dict[str, Any]]:
        """Params (and opt state) restored onto the shardings of the abstract trees."""
        step = self._step(step)
        items = {"params": ocp.args.StandardRestore(abstract_params),
                 "meta": ocp.args.JsonRestore()}
        if abstract_opt_state is not None:
            items["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        opt_state = out["opt_state"] if abstract_opt_state is not None else None
        return out["params"], opt_state, out["meta"]

    def _step(self, step: int | None) -> int:
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"{self.directory}: no checkpoint steps")
        if step is None:
            return max(steps)
        if step not in steps:
            raise FileNotFoundError(f"{self.directory}: no step {step}; available: {steps}")
        return step

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def abstract(tree, shardings=None):
    """ShapeDtypeStructs of a tree of arrays or shapes, placed on `shardings` (a matching tree)
    or, without, on the arrays' own shardings: the one way restore targets are built."""
    if shardings is None:
        shardings = jax.tree.map(lambda x: x.sharding, tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


def abstract_params(cfg: ModelConfig, mesh: Mesh | None = None) -> Params:
    """The params' restore target on `mesh`, or on this process's first device."""
    shapes = model.abstract_params(cfg)
    if mesh is None:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return abstract(shapes, jax.tree.map(lambda _: device, shapes))
    return abstract(shapes, parallel.tree_shardings(mesh, model.param_axes(cfg), shapes))


def is_checkpoint_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.path.exists(os.path.join(path, "config.json")) and \
        any(name.isdigit() for name in os.listdir(path))


def load_model(path: str, dtype: Any = None, step: int | None = None, mesh: Mesh | None = None
               ) -> tuple[ModelConfig, Params]:
    """(cfg, params) from an HF directory or from a checkpoint directory of ours (latest step
    unless `step`). `dtype` casts the params (None keeps the stored dtype)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such model directory")
    if not is_checkpoint_dir(path):
        return hf.load_pretrained(path, dtype=dtype, mesh=mesh)
    ckpt = Checkpoints(path, max_to_keep=None, async_save=False)
    try:
        meta = ckpt.read_meta(step)
        cfg = config_from_json(meta["model_config"])
        params, _, _ = ckpt.restore(step, abstract_params(cfg, mesh))
    finally:
        ckpt.close()
    if dtype is not None and jnp.dtype(dtype) != jnp.dtype(cfg.param_dtype):
        params = jax.tree.map(lambda p: p.astype(dtype), params)
        cfg = cfg.replace(param_dtype=jnp.dtype(dtype).name, dtype=jnp.dtype(dtype).name)
    return cfg, params


def initial_model(config: ml_collections.ConfigDict, mesh: Mesh
                  ) -> tuple[ModelConfig, Params | None]:
    """A run's starting model: `config.model_dir` (HF or ours), else the preset `config.model`
    (params None: random init happens born-sharded in the train state). The numerics
    (dtypes, remat, attention blocks) are always `config.model`'s."""
    m = config.model
    numerics = dict(dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat,
                    attention_block=m.attention_block)
    if config.model_dir:
        cfg, params = load_model(config.model_dir, dtype=m.param_dtype, mesh=mesh)
        return cfg.replace(**numerics), params
    return model.preset(m.preset, **dict(m.overrides), **numerics), None


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the run: another model, or another optimizer state."""


# ModelConfig fields that change how the model computes, not what is stored: a run may resume
# with other values.
_COMPUTE_ONLY = ("dtype", "remat", "attention_block")


def check_compatible(ckpt: Checkpoints, step: int, target: TrainState,
                     model_cfg: ModelConfig) -> None:
    """Raises CheckpointMismatchError, naming the step's directory and every difference, when
    step `step` holds another model config or params / optimizer state of other paths, shapes
    or dtypes than `target` (an abstract or concrete state): Orbax's own error would be a long
    traceback suggesting a partial restore."""
    where = os.path.join(ckpt.directory, str(step))
    saved = ckpt.read_meta(step).get("model_config", {})
    # Read back through the dataclass, so fields added since the save take their defaults;
    # fields this version does not know stay, and are reported as differences.
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    if saved:
        saved = {**saved, **_as_json(config_from_json({k: v for k, v in saved.items()
                                                        if k in known}))}
    ours = _as_json(model_cfg)
    diffs = [f"{k}: checkpoint {saved.get(k, '(none)')}, config {ours.get(k, '(none)')}"
             for k in sorted(set(saved) | set(ours))
             if k not in _COMPUTE_ONLY and saved.get(k) != ours.get(k)]
    if diffs:
        raise CheckpointMismatchError(
            f"{where} holds another model than the config's: " + "; ".join(diffs) +
            ". Resume with the checkpoint's model config, or start a new workdir.")
    stored = ckpt.manager.item_metadata(step)
    for name in ("params", "opt_state"):
        if stored[name] is None:
            raise CheckpointMismatchError(f"{where} has no {name} to resume from")
        have, want = _leaves(stored[name]), _leaves(getattr(target, name))
        diffs = [f"{k}: checkpoint {have.get(k, '(none)')}, run {want.get(k, '(none)')}"
                 for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)]
        if diffs:
            more = f" (and {len(diffs) - 5} more)" if len(diffs) > 5 else ""
            raise CheckpointMismatchError(
                f"{where}: the {name} differ from this run's (another optimizer or state "
                f"structure?): " + "; ".join(diffs[:5]) + more)


def _as_json(cfg: ModelConfig) -> dict[str, Any]:
    return json.loads(json.dumps(config_to_json(cfg)))  # Tuples as JSON lists.


def _leaves(tree) -> dict[str, str]:
    """'path/to/leaf' -> 'shape dtype' of every array (or array metadata) of a tree; paths of
    attributes, keys and indices alike, so a restored tree and Orbax's metadata compare."""
    def name(key) -> str:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)

    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(map(name, path)): f"{tuple(x.shape)} {jnp.dtype(x.dtype).name}"
            for path, x in flat}


def restore_train_state(ckpt: Checkpoints, state: TrainState, model_cfg: ModelConfig
                        ) -> tuple[TrainState, int, int]:
    """(state, first step, this host's data position) from the latest checkpoint of the run,
    onto the shardings of the fresh `state`; without a checkpoint, `state` at step 0. A
    checkpoint of another model or state structure is an error (`check_compatible`)."""
    step = ckpt.latest_step()
    if step is None:
        return state, 0, 0
    target = abstract(state)
    check_compatible(ckpt, step, target, model_cfg)
    params, opt_state, meta = ckpt.restore(step, target.params, target.opt_state)
    logging.info("resumed from %s at step %d", ckpt.directory, meta["step"])
    state = TrainState(params, opt_state, jnp.asarray(meta["updates"], jnp.int32))
    return state, meta["step"], meta["data_position"][jax.process_index()]


def save_train_state(ckpt: Checkpoints, step: int, state: TrainState, model_cfg: ModelConfig,
                     data_position: int, seed: int) -> None:
    """Params, optimizer state and what resuming needs: step, every host's data position."""
    positions = [data_position]
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        positions = multihost_utils.process_allgather(np.int64(data_position)).tolist()
    meta = {"step": step, "updates": int(jax.device_get(state.step)), "seed": seed,
            "model_config": config_to_json(model_cfg), "data_position": positions}
    ckpt.save(step, state.params, meta, state.opt_state, force=True)


def save_if_due(ckpt: Checkpoints, preemption: Preemption, step: int,
                config: ml_collections.ConfigDict, state: TrainState, model_cfg: ModelConfig,
                data_position: int) -> bool:
    """Saves step `step` (completed) every `config.ckpt.every_steps`, at the last step, and when
    preempted; returns whether the run was preempted (then every process stops)."""
    preempted = preemption.reached(step)
    if preempted or step % config.ckpt.every_steps == 0 or step == config.total_steps:
        save_train_state(ckpt, step, state, model_cfg, data_position, config.seed)
    return preempted


class Preemption:
    """Whether a SIGTERM asks the run to save a checkpoint and stop at this step, agreed by
    every process.

    With several processes, `jax.distributed`'s preemption service catches the signal and
    Orbax's `reached_preemption(step)` turns True at the same step on every host, whichever
    host got it: they all save that step (a collective) and stop. A single process has no such
    service; there a SIGTERM handler sets the flag, which one process agrees with trivially.
    """

    def __init__(self, ckpt: Checkpoints):
        self.manager = ckpt.manager
        self.signalled = False
        self.previous = None
        if jax.process_count() == 1:
            self.previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        del signum, frame
        self.signalled = True

    def reached(self, step: int) -> bool:
        """Call at every step, on every process, with the same increasing `step`."""
        multi = jax.process_count() > 1
        stop = self.manager.reached_preemption(step) if multi else self.signalled
        if stop:
            logging.warning("preempted: saving step %d and stopping", step)
        return stop

    def close(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


@contextlib.contextmanager
def training_run(ckpt: Checkpoints, writer: MetricsWriter, *closing: Any
                 ) -> Iterator[Preemption]:
    """Around a training loop: yields its `Preemption` watcher. At the end, also on an error,
    stops the watcher, closes `closing` (e.g. the grader pool), lets the last save land and
    closes the manager and the metrics `writer`; after a normal end process 0 says where they
    are."""
    preemption = Preemption(ckpt)
    try:
        yield preemption
    finally:
        preemption.close()
        for resource in closing:
            resource.close()
        ckpt.wait()
        ckpt.close()
        writer.close()
    if jax.process_index() == 0:
        print(f"checkpoints in {ckpt.directory}, {writer.where()}")

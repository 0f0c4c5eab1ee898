"""Orbax checkpoints: params, optimizer state and a JSON record (step, model config, data
position, RNG) per step, and `load_model` for any model path (HF directory or our checkpoint).

A checkpoint directory holds one folder per step with the items `params`, optionally
`opt_state`, and `meta`. Orbax writes each step to a temporary folder and renames it when
complete, so a crash or a full disk never leaves a half-written step as the latest.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from stepgrpo_jax import hf, model, parallel
from stepgrpo_jax.model import ModelConfig, Params


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
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("params", "opt_state", "meta"))

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


def abstract_params(cfg: ModelConfig, mesh: Mesh | None = None, rules=None) -> Params:
    """ShapeDtypeStructs with shardings (the mesh's, or this process's first device)."""
    shapes = model.abstract_params(cfg)
    if mesh is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree.map(lambda _: sharding, shapes)
    else:
        shardings = parallel.tree_shardings(mesh, model.param_axes(cfg), shapes, rules)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, shardings)


def is_checkpoint_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.path.exists(os.path.join(path, "config.json")) and \
        any(name.isdigit() for name in os.listdir(path))


def load_model(path: str, dtype: Any = None, step: int | None = None, mesh: Mesh | None = None,
               rules=None) -> tuple[ModelConfig, Params]:
    """(cfg, params) from an HF directory or from a checkpoint directory of ours (latest step
    unless `step`). `dtype` casts the params (None keeps the stored dtype)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such model directory")
    if not is_checkpoint_dir(path):
        return hf.load_pretrained(path, dtype=dtype, mesh=mesh, rules=rules)
    ckpt = Checkpoints(path, max_to_keep=None, async_save=False)
    try:
        meta = ckpt.read_meta(step)
        cfg = config_from_json(meta["model_config"])
        params, _, _ = ckpt.restore(step, abstract_params(cfg, mesh, rules))
    finally:
        ckpt.close()
    if dtype is not None and jnp.dtype(dtype) != jnp.dtype(cfg.param_dtype):
        params = jax.tree.map(lambda p: p.astype(dtype), params)
        cfg = cfg.replace(param_dtype=jnp.dtype(dtype).name, dtype=jnp.dtype(dtype).name)
    return cfg, params

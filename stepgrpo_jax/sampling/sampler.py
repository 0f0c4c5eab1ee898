"""The compiled sampler: prefill a padded batch, then one `lax.while_loop` of decode steps.

Prompts are right-padded to a bucket and prefilled at positions 0..T-1; the pad slots hold junk
that each row overwrites (its first completion token goes to slot `prompt_len`) before anything
attends to it. Then every iteration feeds one token per row at that row's own slot (`rows.py`
decides which), until every row is done or the step budget is spent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from stepgrpo_jax import model, parallel
from stepgrpo_jax.model import ModelConfig, Params
from stepgrpo_jax.sampling import rows as rows_lib
from stepgrpo_jax.sampling.config import EXIT_REASONS, SamplerConfig
from stepgrpo_jax.sampling.steps import TriggerTables


@dataclasses.dataclass(frozen=True)
class SampleOutput:
    """Per-row results on the host; completion slots past `lengths` hold padding."""

    tokens: np.ndarray  # [B, R] int32: completion ids, EOS included
    logprobs: np.ndarray  # [B, R] float32: log-prob of each token (appended ones too) under the
    # model's softmax at temperature 1, not the filtered sampling distribution: diagnostics
    forced: np.ndarray  # [B, R] bool: appended by the sampler (exit suffix, "\n\n") or put back
    lengths: np.ndarray  # [B] int32
    step_counts: np.ndarray  # [B] int32: k = 1 + trigger occurrences in the completion (SPEC §2)
    num_probes: np.ndarray  # [B] int32: DTR probes run, the one that exited included
    exit_reasons: np.ndarray  # [B] int32: index into EXIT_REASONS
    think_end: np.ndarray  # [B] int32: where the answer starts (after `</think>` and its suffix)
    num_steps: int  # Decode iterations the loop ran.

    def completion(self, row: int) -> list[int]:
        return self.tokens[row, :self.lengths[row]].tolist()

    def exit_reason(self, row: int) -> str:
        return EXIT_REASONS[self.exit_reasons[row]]


def concat(outputs: Sequence[SampleOutput]) -> SampleOutput:
    """The rows of several sampler calls as one output (their decode iterations add up)."""
    fields = [f.name for f in dataclasses.fields(SampleOutput) if f.name != "num_steps"]
    return SampleOutput(**{f: np.concatenate([getattr(o, f) for o in outputs]) for f in fields},
                        num_steps=sum(o.num_steps for o in outputs))


class Sampler:
    """A compiled sampler for one model shape and SamplerConfig.

    jit keeps one executable per (prompt bucket, batch size): another batch in the same bucket
    runs without tracing again. With a mesh, the batch is split over ("data", "fsdp") and the
    KV cache's heads over "tensor"; params should already carry their shardings.
    """

    def __init__(self, cfg: ModelConfig, scfg: SamplerConfig, tables: TriggerTables,
                 mesh: Mesh | None = None):
        self.scfg, self.tables, self.mesh = scfg, tables, mesh
        self._generate = jax.jit(functools.partial(_generate, cfg, scfg))

    def __call__(self, params: Params, prompts: Sequence[Sequence[int]], rng: jax.Array
                 ) -> SampleOutput:
        """Samples one completion per prompt (this process's rows of the batch)."""
        if not prompts or min(map(len, prompts)) == 0:
            raise ValueError("every prompt needs at least one token")
        # Every process must pick the same bucket: the batch is one global array.
        bucket = self.scfg.bucket(parallel.process_max(max(map(len, prompts))))
        ids = np.full((len(prompts), bucket), self.scfg.pad_id, np.int32)
        for row, prompt in enumerate(prompts):
            ids[row, :len(prompt)] = prompt
        batch = {"ids": ids, "lengths": np.array([len(p) for p in prompts], np.int32)}
        with jax.set_mesh(self.mesh) if self.mesh else contextlib.nullcontext():
            if self.mesh is not None:
                batch = parallel.host_to_global(batch, self.mesh)
            out = self._generate(params, self.tables, batch["ids"], batch["lengths"], rng)
            out = {k: self._to_host(v) for k, v in out.items()}
        num_steps = int(out.pop("num_steps"))
        return SampleOutput(**out, num_steps=num_steps)

    def lower(self, params: Params, batch_size: int, prompt_len: int, rng: jax.Array
              ) -> jax.stages.Lowered:
        """The compiled program for a (global) batch of `batch_size` prompts padded to
        `prompt_len`; `params` may be abstract (ShapeDtypeStructs with shardings), as for
        ahead-of-time compilation (tools/aot_compile.py)."""
        rows = parallel.named_sharding(self.mesh, ("act_batch",)) if self.mesh else None
        ids = jax.ShapeDtypeStruct((batch_size, prompt_len), jnp.int32, sharding=rows)
        lengths = jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=rows)
        with jax.set_mesh(self.mesh) if self.mesh else contextlib.nullcontext():
            return self._generate.lower(params, self.tables, ids, lengths, rng)

    def _to_host(self, x: jax.Array) -> np.ndarray:
        """This process's rows (or the value, if replicated)."""
        if x.is_fully_addressable or x.is_fully_replicated:
            return np.asarray(x)
        spec = parallel.logical_to_spec(("act_batch",), mesh=self.mesh)
        return np.asarray(multihost_utils.global_array_to_host_local_array(x, self.mesh, spec))


def _constrain_rows(tree):
    """Everything per row is split along the batch like the activations."""
    return jax.tree.map(
        lambda x: parallel.constrain(x, ("act_batch",) + (None,) * (x.ndim - 1)), tree)


def _constrain_cache(cache: model.KVCache) -> model.KVCache:
    return jax.tree.map(lambda x: parallel.constrain(x, model.KVCache.AXES), cache)


def budget(scfg: SamplerConfig, tables: TriggerTables, prompt_len: int) -> tuple[int, int]:
    """(KV cache slots per row, most decode iterations) of a batch padded to `prompt_len`."""
    R, dtr = scfg.max_new_tokens, scfg.dtr
    probe_slots = len(dtr.probe_ids) + dtr.probe_budget if dtr else 0
    # Each probe costs its slots plus putting its trigger back (a few tokens).
    max_steps = R + (dtr.max_probes * (probe_slots + max(map(len, tables.triggers)) + 1)
                     if dtr else 0)
    return prompt_len + R + probe_slots, max_steps


def _generate(cfg: ModelConfig, scfg: SamplerConfig, params: Params, tables: TriggerTables,
              ids: jax.Array, prompt_len: jax.Array, rng: jax.Array) -> dict[str, jax.Array]:
    B, T = ids.shape
    R = scfg.max_new_tokens
    num_slots, max_steps = budget(scfg, tables, T)

    cache = _constrain_cache(model.init_cache(cfg, B, num_slots, jnp.dtype(scfg.cache_dtype)))
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    h, cache = model.hidden_states(cfg, params, ids, positions=positions, cache=cache)
    last = jnp.take_along_axis(h, (prompt_len - 1)[:, None, None], axis=1)[:, 0]  # [B, D]
    logits = model.logits_from_hidden(cfg, params, last)  # [B, V]: only the last position's.
    rows = _constrain_rows(rows_lib.init(prompt_len, rng, R))

    def cond(carry):
        step, rows, _, _ = carry
        return (step < max_steps) & jnp.any(rows.phase != rows_lib.DONE)

    def body(carry):
        step, rows, logits, cache = carry
        rows, feed, slot = rows_lib.advance(rows, logits, step, tables, scfg, num_slots)
        logits, cache = model.forward(cfg, params, feed[:, None], positions=slot[:, None],
                                      cache=cache)
        return step + 1, _constrain_rows(rows), logits[:, 0], _constrain_cache(cache)

    step, rows, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), rows, logits, cache))
    return {**_constrain_rows(rows_lib.finish(rows, tables, scfg.pad_id)), "num_steps": step}

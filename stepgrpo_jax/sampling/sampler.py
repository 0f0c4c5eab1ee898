"""The static sampler: prefill a padded batch, then one `lax.while_loop` of decode steps.

Prompts are right-padded to a bucket and prefilled at positions 0..T-1. Then every iteration
feeds one token per row at that row's own slot (`dtr.py` decides which), until every row is done
or the step budget is spent: a batch decodes as long as its longest row. The rollout engine
(`engine.py`) refills finished rows instead; this sampler stays as the reference it must equal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from stepgrpo_jax import model, parallel
from stepgrpo_jax.model import ModelConfig, Params
from stepgrpo_jax.sampling import decode, dtr, filters
from stepgrpo_jax.sampling.config import SamplerConfig
from stepgrpo_jax.sampling.decode import SampleOutput
from stepgrpo_jax.sampling.steps import TriggerTables


class Sampler:
    """A compiled sampler for one model shape and SamplerConfig.

    jit keeps one executable per (prompt bucket, batch size): another batch in the same bucket
    runs without tracing again. With a mesh, the batch is split over ("data", "fsdp") and the
    KV cache's heads over "tensor"; params should already carry their shardings. `rollout`
    runs calls of `rows` rows (default: all requests at once).
    """

    def __init__(self, cfg: ModelConfig, scfg: SamplerConfig, tables: TriggerTables,
                 mesh: Mesh | None = None, rows: int | None = None):
        self.scfg, self.tables, self.mesh, self.rows = scfg, tables, mesh, rows
        self._generate = jax.jit(functools.partial(_generate, cfg, scfg))

    def __call__(self, params: Params, prompts: Sequence[Sequence[int]], rng: jax.Array,
                 request_ids: Sequence[int] | None = None) -> SampleOutput:
        """Samples one completion per prompt (this process's rows of the batch).

        Row i draws its random numbers from `fold_in(rng, request_ids[i])`; by default the
        request id is the row's index in the global batch.
        """
        if not prompts or min(map(len, prompts)) == 0:
            raise ValueError("every prompt needs at least one token")
        if request_ids is None:
            request_ids = jax.process_index() * len(prompts) + np.arange(len(prompts))
        # Every process must pick the same bucket: the batch is one global array.
        bucket = self.scfg.bucket(parallel.process_max(max(map(len, prompts))))
        ids = np.full((len(prompts), bucket), self.scfg.pad_id, np.int32)
        for row, prompt in enumerate(prompts):
            ids[row, :len(prompt)] = prompt
        batch = {"ids": ids, "lengths": np.array([len(p) for p in prompts], np.int32),
                 "requests": np.asarray(request_ids, np.int32)}
        with jax.set_mesh(self.mesh) if self.mesh else contextlib.nullcontext():
            if self.mesh is not None:
                batch = parallel.host_to_global(batch, self.mesh)
            out = self._generate(params, self.tables, batch["ids"], batch["lengths"],
                                 batch["requests"], rng)
            out = {k: decode.to_host(v, self.mesh) for k, v in out.items()}
        num_steps = int(out.pop("num_steps"))
        return SampleOutput(**out, num_steps=num_steps, row_steps=len(prompts) * num_steps,
                            prefill_tokens=ids.size)

    def rollout(self, params: Params, prompts: Sequence[Sequence[int]], group_size: int,
                rng: jax.Array, progress: bool = False) -> SampleOutput:
        """`Engine.rollout`'s completions (group-major, same request ids, so the same tokens)
        from calls of `self.rows` rows each; the last call is padded with repeats of its last
        request, so that every call has one compiled shape. `progress` shows a bar."""
        requests = [p for p in prompts for _ in range(group_size)]
        rows = self.rows or len(requests)
        first = jax.process_index() * len(requests)  # The engine's global queue order.
        outs = []
        bar = decode.progress_bar(len(requests) * jax.process_count(), progress)
        for start in range(0, len(requests), rows):
            chunk = requests[start:start + rows]
            ids = np.arange(start, start + len(chunk))
            pad = rows - len(chunk)
            out = self(params, chunk + chunk[-1:] * pad, rng,
                       first + np.concatenate([ids, ids[-1:].repeat(pad)]))
            outs.append(out if not pad else dataclasses.replace(
                out, **{f: getattr(out, f)[:len(chunk)] for f in decode.PER_ROW}))
            bar.update(len(chunk) * jax.process_count())
        bar.close()
        return decode.concat(outs)

    def lower(self, params: Params, batch_size: int, prompt_len: int, rng: jax.Array
              ) -> jax.stages.Lowered:
        """The program for a (global) batch of `batch_size` prompts padded to `prompt_len`;
        `params` and `rng` may be abstract (ShapeDtypeStructs with shardings), as for
        ahead-of-time compilation (tools/aot_compile.py)."""
        rows = parallel.named_sharding(self.mesh, ("act_batch",)) if self.mesh else None
        ids = jax.ShapeDtypeStruct((batch_size, prompt_len), jnp.int32, sharding=rows)
        per_row = jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=rows)
        with jax.set_mesh(self.mesh) if self.mesh else contextlib.nullcontext():
            return self._generate.lower(params, self.tables, ids, per_row, per_row, rng)


def _generate(cfg: ModelConfig, scfg: SamplerConfig, params: Params, tables: TriggerTables,
              ids: jax.Array, prompt_len: jax.Array, request_ids: jax.Array, rng: jax.Array
              ) -> dict[str, jax.Array]:
    B, T = ids.shape
    prompt_kv, logits = decode.prefill(cfg, scfg, params, ids, prompt_len)
    cache = model.init_cache(cfg, B, decode.num_slots(scfg, T), jnp.dtype(scfg.cache_dtype))
    cache = decode.constrain_cache(jax.tree.map(lambda c, p: c.at[:, :, :T].set(p), cache,
                                                prompt_kv))
    keys = filters.request_keys(rng, request_ids)
    rows = decode.constrain_rows(dtr.init(prompt_len, keys, scfg.max_new_tokens))
    max_steps = decode.max_steps(scfg, tables)

    def cond(carry):
        step, rows, _, _ = carry
        return (step < max_steps) & jnp.any(rows.phase != dtr.DONE)

    def body(carry):
        step, rows, logits, cache = carry
        return step + 1, *decode.decode_step(cfg, scfg, params, tables, rows, logits, cache, step)

    step, rows, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), rows, logits, cache))
    return {**decode.constrain_rows(dtr.finish(rows, tables, scfg.pad_id)), "num_steps": step}

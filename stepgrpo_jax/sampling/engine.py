"""The rollout engine: a fixed pool of decode rows serving a queue of completion requests.

A request is (prompt, group, sample index); its key is `fold_in(rng, request_id)` and, as in the
static sampler, its n-th decode iteration draws with `fold_in(key, n)`. So a completion does not
depend on the row or the moment it ran in, and equals the static sampler's token for token.

Design: compiled decode segments plus a compiled insert, driven by the host.
- `_segment` runs decode iterations (`decode.decode_step`, DTR unchanged) in a `while_loop` that
  returns as soon as a row finishes its request while requests are still queued, or when every
  row is done. A finished row is therefore refilled before the next iteration: no row waits.
- `_prefill` runs one group's prompt once into a small buffer of prompt caches; the G requests
  of the group copy it from there (one prefill per group).
- `_insert` saves finished rows' results into the output arrays (on the device) and starts new
  requests in free rows: it copies the group's prompt KV into the row (`_copy_prompt`, the only
  place that knows the cache layout: a paged cache replaces that one function) and resets the
  row's DTR state.
The host only decides which request goes to which row: it moves per-row ids and flags, reads
which rows are done, and never touches the cache. Refilling inside the graph instead would need
a prefill under a `cond` inside the decode loop and the whole queue on the device; a return per
finished request costs one small transfer, against thousands of decode iterations per request.
Each function compiles once per (prompt bucket, pool size, request count); `chex` checks it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from stepgrpo_jax import model, parallel
from stepgrpo_jax.model import ModelConfig, Params
from stepgrpo_jax.sampling import decode, dtr, filters
from stepgrpo_jax.sampling.config import SamplerConfig
from stepgrpo_jax.sampling.decode import SampleOutput
from stepgrpo_jax.sampling.sampler import Sampler
from stepgrpo_jax.sampling.steps import TriggerTables


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Pool:
    """The decode rows (B of them, S cache slots each)."""

    rows: dtr.Rows  # [B] DTR state of each row's completion
    logits: jax.Array  # [B, V] float32: next-token logits of each row
    cache: model.KVCache  # [L, B, S, K, H]
    request: jax.Array  # [B] int32: the request a row holds, -1 once its result is saved
    step: jax.Array  # [B] int32: decode iterations of the row's request (its key index)
    iterations: jax.Array  # [] int32: decode iterations run


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PromptCache:
    """Prefilled prompts waiting for their requests (P groups, prompt bucket T)."""

    kv: model.KVCache  # [L, P, T, K, H]
    logits: jax.Array  # [P, V] float32: logits after the prompt's last token


class Engine:
    """Samples G completions of each prompt on a pool of `num_rows` decode rows.

    With a mesh, rows are split over ("data", "fsdp") like the static sampler's batch, so
    `num_rows` must divide over those axes. With several processes, every process passes its own
    prompts and gets back its own completions; all of them schedule the global queue alike.
    Results wait on the devices, replicated ([N, R] per field for N requests), until the end.
    """

    def __init__(self, cfg: ModelConfig, scfg: SamplerConfig, tables: TriggerTables,
                 num_rows: int, mesh: Mesh | None = None):
        if num_rows < 1:
            raise ValueError(f"num_rows={num_rows} must be >= 1")
        self.cfg, self.scfg, self.tables, self.mesh = cfg, scfg, tables, mesh
        self.num_rows = num_rows
        self._segment = jax.jit(functools.partial(_segment, cfg, scfg), donate_argnums=2)
        self._prefill = jax.jit(functools.partial(_prefill, cfg, scfg), donate_argnums=1)
        self._insert = jax.jit(functools.partial(_insert, scfg), donate_argnums=(1, 2))
        self._start = jax.jit(functools.partial(_start, cfg, scfg), static_argnums=(1, 2, 3, 4))

    def rollout(self, params: Params, prompts: Sequence[Sequence[int]], group_size: int,
                rng: jax.Array, progress: bool = False) -> SampleOutput:
        """Completions of each of this process's prompts, `group_size` each, group-major: row
        g * group_size + s is sample s of prompt g. Its request id is its index in the global
        queue (every process's rows in process order), as the static sampler's row index.
        `progress` shows a bar of finished completions (global, on process 0)."""
        if not prompts or min(map(len, prompts)) == 0:
            raise ValueError("every prompt needs at least one token")
        G, B, scfg = group_size, self.num_rows, self.scfg
        T = scfg.bucket(parallel.process_max(max(map(len, prompts))))
        ids = np.full((len(prompts), T), scfg.pad_id, np.int32)
        for g, prompt in enumerate(prompts):
            ids[g, :len(prompt)] = prompt
        lengths = np.array([len(p) for p in prompts], np.int32)
        if jax.process_count() > 1:  # Every process schedules the same global queue.
            ids, lengths = (np.asarray(multihost_utils.process_allgather(x, tiled=True))
                            for x in (ids, lengths))
        num_groups, N = len(ids), len(ids) * G
        # Requests start in queue order, so the groups being placed at once are consecutive:
        # at most ceil(B / G) + 1 of them, the first possibly begun by the previous insert.
        P = math.ceil(B / G) + 1
        with jax.set_mesh(self.mesh) if self.mesh else contextlib.nullcontext():
            pool, buffer, out = self._start(self.tables, B, T, N, P)
            done, next_request, prefilled = np.ones(B, bool), 0, 0
            bar = decode.progress_bar(N, progress)
            while True:
                bar.update(next_request - int((~done).sum()) - bar.n)
                # Free rows take the next requests, in queue order.
                rows = np.flatnonzero(done)[:N - next_request]
                fill = np.zeros(B, bool)
                fill[rows] = True
                request = np.zeros(B, np.int32)
                request[rows] = np.arange(next_request, next_request + len(rows))
                next_request += len(rows)
                group = request // G
                # The groups that start now are prefilled once, before their first request.
                for g in range(prefilled, int(group[rows].max(initial=-1)) + 1):
                    buffer = self._prefill(params, buffer, *self._put(
                        ids[g:g + 1], lengths[g:g + 1], np.int32(g % P)))
                    prefilled = g + 1
                # Saves every finished row's result (at the end: the last ones), starts the new.
                pool, out = self._insert(self.tables, pool, out, buffer, *self._put(
                    fill, request, (group % P).astype(np.int32), lengths[group]), rng)
                if not len(rows):  # A segment only returns with rows to refill, or all done.
                    break
                pool, done = self._segment(params, self.tables, pool,
                                           self._put(np.bool_(next_request < N))[0])
                done = jax.device_get(done.addressable_data(0))  # The one sync a segment.
            bar.close()
            iterations = int(jax.device_get(pool.iterations.addressable_data(0)))
            result = {k: self._local(v, len(prompts) * G) for k, v in out.items()}
        return SampleOutput(**result, num_steps=iterations,
                            row_steps=B // jax.process_count() * iterations,
                            prefill_tokens=num_groups * T // jax.process_count())

    def _put(self, *values: np.ndarray) -> tuple[jax.Array, ...]:
        """Host values for the compiled calls, copied explicitly (replicated on the mesh): the
        training loop forbids implicit copies."""
        replicated = NamedSharding(self.mesh, PartitionSpec()) if self.mesh else None
        return jax.device_put(values, replicated)

    def _local(self, x: jax.Array, n: int) -> np.ndarray:
        """This process's requests of a replicated [N, ...] output."""
        start = jax.process_index() * n
        return jax.device_get(x.addressable_data(0))[start:start + n]


def make_sampler(kind: str, cfg: ModelConfig, scfg: SamplerConfig, tables: TriggerTables,
                 rows: int, mesh: Mesh | None = None) -> Engine | Sampler:
    """The rollout sampler of `config.sampling.engine`: "continuous" (an engine of `rows`
    decode rows on each process) or "static" (calls of `rows` rows). Both have `rollout`."""
    if kind == "continuous":
        return Engine(cfg, scfg, tables, rows * jax.process_count(), mesh)
    if kind == "static":
        return Sampler(cfg, scfg, tables, mesh, rows=rows)
    raise ValueError(f"sampling.engine={kind!r}: expected 'continuous' or 'static'")


def _start(cfg: ModelConfig, scfg: SamplerConfig, tables: TriggerTables, B: int, T: int,
           N: int, P: int) -> tuple[Pool, PromptCache, dict[str, jax.Array]]:
    """An idle pool (every row done, holding no request), an empty prompt buffer, and outputs
    for N requests."""
    R, dtype = scfg.max_new_tokens, jnp.dtype(scfg.cache_dtype)
    zeros = jnp.zeros(B, jnp.int32)
    rows = dtr.init(zeros + 1, filters.request_keys(jax.random.key(0), zeros), R)
    rows = dataclasses.replace(rows, phase=zeros + dtr.DONE)
    cache = model.init_cache(cfg, B, decode.num_slots(scfg, T), dtype)
    pool = Pool(decode.constrain_rows(rows), jnp.zeros((B, cfg.vocab_size), jnp.float32),
                decode.constrain_cache(cache), zeros - 1, zeros, jnp.int32(0))
    buffer = PromptCache(model.init_cache(cfg, P, T, dtype),
                         jnp.zeros((P, cfg.vocab_size), jnp.float32))
    out = _replicated(jax.tree.map(lambda x: jnp.zeros((N,) + x.shape[1:], x.dtype),
                                   dtr.finish(rows, tables, scfg.pad_id)))
    return pool, buffer, out


def _replicated(tree):
    return jax.tree.map(lambda x: parallel.constrain(x, (None,) * x.ndim), tree)


def _prefill(cfg: ModelConfig, scfg: SamplerConfig, params: Params, buffer: PromptCache,
             ids: jax.Array, prompt_len: jax.Array, slot: jax.Array) -> PromptCache:
    """Prefills one group's prompt (ids [1, T]) into buffer slot `slot`."""
    kv, logits = decode.prefill(cfg, scfg, params, ids, prompt_len)
    kv = jax.tree.map(lambda b, x: jax.lax.dynamic_update_slice_in_dim(b, x, slot, axis=1),
                      buffer.kv, kv)
    return PromptCache(kv, jax.lax.dynamic_update_slice_in_dim(buffer.logits, logits, slot, 0))


def _copy_prompt(cache: model.KVCache, prompts: model.KVCache, fill: jax.Array,
                 src: jax.Array) -> model.KVCache:
    """cache[:, b, :T] = prompts[:, src[b]] for the rows b in `fill`: the prompt's keys and
    values start the row's cache; slots past T are stale and masked until overwritten. The
    gather is batch-aligned (every row's shard reads its own source, dropped where not filled),
    so it splits over the mesh like the rows: B x T slots an insert, never the S-slot cache."""
    B, T = fill.shape[0], prompts.k.shape[2]
    dst = jnp.where(fill, jnp.arange(B), B)  # Rows not filled: out of range, dropped.
    return decode.constrain_cache(jax.tree.map(
        lambda c, p: c.at[:, dst, :T].set(p[:, src], mode="drop"), cache, prompts))


def _insert(scfg: SamplerConfig, tables: TriggerTables, pool: Pool, out: dict[str, jax.Array],
            buffer: PromptCache, fill: jax.Array, new_request: jax.Array, src: jax.Array,
            prompt_len: jax.Array, rng: jax.Array) -> tuple[Pool, dict[str, jax.Array]]:
    """Saves the results of rows that finished their requests into `out` [N, ...], then starts
    request `new_request[b]` (prompt in buffer slot `src[b]`, `prompt_len[b]` tokens) in every
    row b where `fill` [B]."""
    N = jax.tree.leaves(out)[0].shape[0]
    finished = (pool.rows.phase == dtr.DONE) & (pool.request >= 0)
    dst = jnp.where(finished, pool.request, N)
    result = dtr.finish(pool.rows, tables, scfg.pad_id)
    out = _replicated({k: v.at[dst].set(result[k], mode="drop") for k, v in out.items()})

    fresh = dtr.init(prompt_len, filters.request_keys(rng, new_request), scfg.max_new_tokens)

    def pick(new, old):
        return jnp.where(fill.reshape(fill.shape + (1,) * (old.ndim - 1)), new, old)

    rows = jax.tree.map(pick, fresh, pool.rows)
    pool = Pool(decode.constrain_rows(rows), pick(buffer.logits[src], pool.logits),
                _copy_prompt(pool.cache, buffer.kv, fill, src),
                jnp.where(fill, new_request, jnp.where(finished, -1, pool.request)),
                jnp.where(fill, 0, pool.step), pool.iterations)
    return pool, out


def _segment(cfg: ModelConfig, scfg: SamplerConfig, params: Params, tables: TriggerTables,
             pool: Pool, refill: jax.Array) -> tuple[Pool, jax.Array]:
    """Decode iterations until every row is done, or (with `refill`: requests are queued) until
    a row finishes its request. Returns the pool and which rows are done [B] (replicated)."""
    max_steps = decode.max_steps(scfg, tables)

    def cond(pool: Pool):
        done = pool.rows.phase == dtr.DONE
        return jnp.any(~done) & ~(refill & jnp.any(done & (pool.request >= 0)))

    def body(pool: Pool):
        running = pool.rows.phase != dtr.DONE
        rows, logits, cache = decode.decode_step(cfg, scfg, params, tables, pool.rows,
                                                 pool.logits, pool.cache, pool.step)
        step = pool.step + running
        # The static sampler's loop bound, per request (a safety net: it never binds).
        rows = dataclasses.replace(rows, phase=jnp.where(step >= max_steps, dtr.DONE, rows.phase))
        return Pool(rows, logits, cache, pool.request, step, pool.iterations + 1)

    pool = jax.lax.while_loop(cond, body, pool)
    return pool, _replicated(pool.rows.phase == dtr.DONE)

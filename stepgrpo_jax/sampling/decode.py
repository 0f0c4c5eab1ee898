"""What the static sampler and the rollout engine share: the cache geometry, the prefill, one
decode iteration of every row, and the move of results to the host.

Both run the same functions on the same per-request keys, so a completion comes out the same
token for token whichever of them ran it (`tests/engine_test.py`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tqdm import tqdm

from stepgrpo_jax import model, parallel
from stepgrpo_jax.model import ModelConfig, Params
from stepgrpo_jax.sampling import dtr
from stepgrpo_jax.sampling.config import EXIT_REASONS, SamplerConfig
from stepgrpo_jax.sampling.steps import TriggerTables


@dataclasses.dataclass(frozen=True)
class SampleOutput:
    """Per-completion results on the host; completion slots past `lengths` hold padding."""

    tokens: np.ndarray  # [B, R] int32: completion ids, EOS included
    logprobs: np.ndarray  # [B, R] float32: log-prob of each token (appended ones too) under the
    # model's softmax at temperature 1, not the filtered sampling distribution: diagnostics
    forced: np.ndarray  # [B, R] bool: appended by the sampler (exit suffix, "\n\n") or put back
    lengths: np.ndarray  # [B] int32
    step_counts: np.ndarray  # [B] int32: k = 1 + trigger occurrences in the completion (SPEC §2)
    num_probes: np.ndarray  # [B] int32: DTR probes run, the one that exited included
    exit_reasons: np.ndarray  # [B] int32: index into EXIT_REASONS
    think_end: np.ndarray  # [B] int32: where the answer starts (after `</think>` and its suffix)
    num_steps: int  # Decode iterations run.
    row_steps: int = 0  # Rows x decode iterations, summed over calls (this process's rows).
    prefill_tokens: int = 0  # Prompt positions put through prefill, padding included.

    def completion(self, row: int) -> list[int]:
        return self.tokens[row, :self.lengths[row]].tolist()

    def exit_reason(self, row: int) -> str:
        return EXIT_REASONS[self.exit_reasons[row]]

    @property
    def occupancy(self) -> float:
        """Generated tokens / (rows x decode iterations): the share of row-iterations that made
        a token of a completion (probe iterations and idle rows do not)."""
        return float(self.lengths.sum()) / max(self.row_steps, 1)


_COUNTERS = ("num_steps", "row_steps", "prefill_tokens")
PER_ROW = tuple(f.name for f in dataclasses.fields(SampleOutput) if f.name not in _COUNTERS)


def concat(outputs: Sequence[SampleOutput]) -> SampleOutput:
    """The rows of several sampler calls as one output (their counters add up)."""
    return SampleOutput(**{f: np.concatenate([getattr(o, f) for o in outputs]) for f in PER_ROW},
                        **{c: sum(getattr(o, c) for o in outputs) for c in _COUNTERS})


def num_slots(scfg: SamplerConfig, prompt_len: int) -> int:
    """Cache slots of a row: the padded prompt, the response budget and a probe's detour."""
    dtr_cfg = scfg.dtr
    return prompt_len + scfg.max_new_tokens + (
        len(dtr_cfg.probe_ids) + dtr_cfg.probe_budget if dtr_cfg else 0)


def max_steps(scfg: SamplerConfig, tables: TriggerTables) -> int:
    """Decode iterations one completion can need: its tokens, and for each probe its slots plus
    putting its trigger back (a few tokens)."""
    d = scfg.dtr
    if d is None:
        return scfg.max_new_tokens
    probe = len(d.probe_ids) + d.probe_budget + max(map(len, tables.triggers)) + 1
    return scfg.max_new_tokens + d.max_probes * probe


def constrain_rows(tree):
    """Everything per row is split along the batch like the activations."""
    return jax.tree.map(
        lambda x: parallel.constrain(x, ("act_batch",) + (None,) * (x.ndim - 1)), tree)


def constrain_cache(cache: model.KVCache) -> model.KVCache:
    return jax.tree.map(lambda x: parallel.constrain(x, model.KVCache.AXES), cache)


def prefill(cfg: ModelConfig, scfg: SamplerConfig, params: Params, ids: jax.Array,
            prompt_len: jax.Array) -> tuple[model.KVCache, jax.Array]:
    """Prompts ids [B, T] (right-padded; `prompt_len` [B] real tokens) at positions 0..T-1.

    Returns their KV cache [L, B, T, K, H] and the logits after each last real token [B, V]
    (float32). Pad slots hold junk that a row overwrites (its first completion token goes to
    slot `prompt_len`) before anything attends to it.
    """
    B, T = ids.shape
    cache = constrain_cache(model.init_cache(cfg, B, T, jnp.dtype(scfg.cache_dtype)))
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    h, cache = model.hidden_states(cfg, params, ids, positions=positions, cache=cache)
    last = jnp.take_along_axis(h, (prompt_len - 1)[:, None, None], axis=1)[:, 0]  # [B, D]
    return constrain_cache(cache), model.logits_from_hidden(cfg, params, last)


def decode_step(cfg: ModelConfig, scfg: SamplerConfig, params: Params, tables: TriggerTables,
                rows: dtr.Rows, logits: jax.Array, cache: model.KVCache, step: jax.Array
                ) -> tuple[dtr.Rows, jax.Array, model.KVCache]:
    """One iteration of every row: choose its token from `logits` [B, V] (DTR state machine,
    `step` [B] or scalar: the iteration of each row's completion), then feed the next token at
    its cache slot. Finished rows feed past the cache: their writes drop."""
    S = cache.k.shape[2]
    rows, feed, slot = dtr.advance(rows, logits, step, tables, scfg, S)
    logits, cache = model.forward(cfg, params, feed[:, None], positions=slot[:, None],
                                  cache=cache)
    return constrain_rows(rows), logits[:, 0], constrain_cache(cache)


def to_host(x: jax.Array, mesh: Mesh | None) -> np.ndarray:
    """This process's rows of a batch-sharded array (or the value, if replicated)."""
    if x.is_fully_addressable or x.is_fully_replicated:
        return jax.device_get(x)
    spec = parallel.logical_to_spec(("act_batch",), mesh=mesh)
    return jax.device_get(multihost_utils.global_array_to_host_local_array(x, mesh, spec))


def progress_bar(total: int, enabled: bool) -> tqdm:
    """A bar of finished completions out of `total` (global), shown by process 0 only."""
    return tqdm(total=total, desc="sampling", unit="completion", leave=False,
                disable=not enabled or jax.process_index() != 0)

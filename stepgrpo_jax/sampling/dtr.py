"""Dynamic Truncated Rollout as the per-row decode state and its update: one token per row per
iteration.

Each iteration a row reads the logits after its last fed token, chooses one token and says which
token to feed next at which cache slot. Rows are independent; every rule below is a masked
`jnp.where` over the batch.

Phases (SPEC §3): THINK -> (PROBE -> THINK)* -> ANSWER -> DONE.
- THINK / ANSWER: the token is the next queued one (`length < queued`: an appended suffix or a
  trigger being put back) or a sampled one. It is kept at `tokens[length]`.
- A sampled token in THINK that confirms a trigger occurrence (`steps.TriggerTables`) starts a
  probe at the occurrence's first token p: the row rolls back to p (its `length`, automaton state
  and cache slot), keeps the trigger's tokens queued in `tokens[p:queued]`, and feeds the probe
  prompt at slot p on. The probe then decodes greedily; its tokens never enter `tokens`.
- When the probe ends, the row either appends the exit suffix at p (ANSWER) or goes back to THINK
  with the trigger queued: both are fed from slot p, so the probe's cache slots are overwritten
  before anything attends to them, which is the whole rollback.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from stepgrpo_jax.sampling import filters
from stepgrpo_jax.sampling.config import EXIT_REASONS, SamplerConfig
from stepgrpo_jax.sampling.steps import OUT, TriggerTables

THINK, PROBE, ANSWER, DONE = range(4)
NATURAL, EARLY_EXIT, BUDGET, EOS, LENGTH = map(
    EXIT_REASONS.index, ("natural", "early_exit", "budget", "eos", "length"))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Rows:
    """Decode state of every row (B rows, R = max_new_tokens)."""

    prompt_len: jax.Array  # [B] int32: cache slot of completion token i is prompt_len + i
    keys: jax.Array  # [B] PRNG keys ([B, 2] if raw uint32 keys), one stream per request
    phase: jax.Array  # [B] int32: THINK / PROBE / ANSWER / DONE
    tokens: jax.Array  # [B, R] int32: the completion, then queued tokens up to `queued`
    logprobs: jax.Array  # [B, R] float32: log-prob of each token under the model (temperature 1)
    forced: jax.Array  # [B, R] bool: appended or put back by the sampler
    length: jax.Array  # [B] int32: tokens kept; during a probe, the boundary p
    queued: jax.Array  # [B] int32: tokens[length:queued] are fed next, in order
    dfa: jax.Array  # [B] int32: trigger-automaton state after tokens[:length]
    triggers: jax.Array  # [B] int32: trigger occurrences confirmed in tokens[:length]
    mark: jax.Array  # [B] int32: first token of the occurrence now pending (if any)
    mark_dfa: jax.Array  # [B] int32: automaton state just before `mark`
    mark_triggers: jax.Array  # [B] int32: confirmed count just before `mark`
    mark_exit_lp: jax.Array  # [B] float32: log-prob of the exit suffix's first token at `mark`
    probe_step: jax.Array  # [B] int32: probe tokens fed since p (0 outside a probe)
    probe_lp: jax.Array  # [B] float32: sum of top-1 log-probs of probe tokens 2, 3, ...
    num_probes: jax.Array  # [B] int32
    reason: jax.Array  # [B] int32: index into EXIT_REASONS
    think_end: jax.Array  # [B] int32: where the answer starts; -1 while thinking


def init(prompt_len: jax.Array, keys: jax.Array, max_new_tokens: int) -> Rows:
    """Rows at the start of their completions; `keys` [B] are the requests' PRNG keys
    (`filters.request_keys`)."""
    B, R = prompt_len.shape[0], max_new_tokens
    zeros = jnp.zeros(B, jnp.int32)
    return Rows(
        prompt_len=prompt_len.astype(jnp.int32), keys=keys, phase=zeros,
        tokens=jnp.zeros((B, R), jnp.int32), logprobs=jnp.zeros((B, R), jnp.float32),
        forced=jnp.zeros((B, R), bool), length=zeros, queued=zeros, dfa=zeros + OUT,
        triggers=zeros, mark=zeros, mark_dfa=zeros + OUT, mark_triggers=zeros,
        mark_exit_lp=jnp.zeros(B, jnp.float32), probe_step=zeros,
        probe_lp=jnp.zeros(B, jnp.float32), num_probes=zeros, reason=zeros + LENGTH,
        think_end=zeros - 1)


def _at(x: jax.Array, i: jax.Array) -> jax.Array:
    """x[b, i[b]] per row (clamped: callers never use an out-of-range read)."""
    return jnp.take_along_axis(x, jnp.minimum(i, x.shape[1] - 1)[:, None], axis=1)[:, 0]


def _put(x: jax.Array, i: jax.Array, values: jax.Array, mask: jax.Array) -> jax.Array:
    """x[b, i[b]] = values[b] where mask[b]."""
    cols = jnp.where(mask, i, x.shape[1])
    return x.at[jnp.arange(x.shape[0]), cols].set(values.astype(x.dtype), mode="drop")


def _put_seq(x: jax.Array, start: jax.Array, seq: tuple[int, ...], mask: jax.Array
             ) -> jax.Array:
    """x[b, start[b]:start[b] + len(seq)] = seq where mask[b]; writes past the end drop."""
    cols = jnp.where(mask, start, x.shape[1])[:, None] + jnp.arange(len(seq))
    values = jnp.broadcast_to(jnp.asarray(seq, x.dtype), cols.shape)
    return x.at[jnp.arange(x.shape[0])[:, None], cols].set(values, mode="drop")


def advance(rows: Rows, logits: jax.Array, step: jax.Array, tables: TriggerTables,
            scfg: SamplerConfig, num_slots: int) -> tuple[Rows, jax.Array, jax.Array]:
    """One iteration of every row given its next-token logits [B, V] (float32). `step` (scalar
    or [B] int32) counts the decode iterations of each row's completion so far: with the
    request's key it picks the random numbers (`filters.choose`).

    Returns the new rows and, per row, the token to feed and its cache slot (`num_slots`, out of
    range, for finished rows: the model drops the write, so they touch nothing).
    """
    lse = jax.nn.logsumexp(logits, axis=-1)
    sampled = filters.choose(logits, rows.keys, step, scfg)
    if scfg.dtr is None:
        no_row_resumes = jnp.zeros_like(rows.phase, bool)  # Only probes resume.
        rows = _keep_step(rows, logits, lse, sampled, no_row_resumes, lse, tables, scfg)
        feed = _at(rows.tokens, rows.length - 1)
    else:
        greedy = filters.greedy(logits)
        rows, resumed, resume_lp = _probe_step(rows, logits, lse, greedy, scfg)
        rows = _keep_step(rows, logits, lse, sampled, resumed, resume_lp, tables, scfg)
        probe_ids = jnp.asarray(scfg.dtr.probe_ids, jnp.int32)
        n = probe_ids.size
        probe_feed = jnp.where(rows.probe_step <= n,
                               probe_ids[jnp.clip(rows.probe_step - 1, 0, n - 1)], greedy)
        feed = jnp.where(rows.phase == PROBE, probe_feed, _at(rows.tokens, rows.length - 1))
    slot = jnp.where(rows.phase == DONE, num_slots,
                     rows.prompt_len + rows.length + rows.probe_step - 1)
    return rows, feed, slot


def _probe_step(rows: Rows, logits, lse, greedy, scfg: SamplerConfig):
    """Probe rows: feed the probe prompt, then decode greedily; at the end decide (SPEC §3.2).

    Returns the rows, which rows just left a probe (`resumed`: they feed their token at p in this
    same iteration) and the log-prob to record for that token, which these logits (the probe's)
    cannot give: the exit suffix's is `mark_exit_lp`, a put-back token keeps its own.
    """
    dtr = scfg.dtr
    in_probe = rows.phase == PROBE
    t = rows.probe_step - len(dtr.probe_ids) + 1  # 1-based index of the probe token chosen now
    chosen = in_probe & (t >= 1)
    probe_lp = rows.probe_lp + jnp.where(chosen & (t >= 2), logits.max(-1) - lse, 0.0)
    closes = greedy == scfg.think_end_id
    ends = chosen & (closes | (t >= dtr.probe_budget))
    # Geometric mean of top-1 probabilities of tokens 2..t; 0 unless the probe closed thinking.
    confidence = jnp.where(closes & (t >= 2), jnp.exp(probe_lp / jnp.maximum(t - 1, 1)), 0.0)
    early = ends & (confidence > dtr.threshold)
    exits = early | ends & (rows.length >= scfg.think_budget - dtr.exit_margin)
    n_exit = len(dtr.exit_ids)
    resume_lp = jnp.where(exits, rows.mark_exit_lp, _at(rows.logprobs, rows.length))
    rows = dataclasses.replace(
        rows,
        tokens=_put_seq(rows.tokens, rows.length, dtr.exit_ids, exits),
        queued=jnp.where(exits, rows.length + n_exit, rows.queued),  # Else the trigger's tokens.
        phase=jnp.where(exits, ANSWER, jnp.where(ends, THINK, rows.phase)),
        reason=jnp.where(exits, jnp.where(early, EARLY_EXIT, BUDGET), rows.reason),
        think_end=jnp.where(exits, rows.length + n_exit, rows.think_end),
        num_probes=rows.num_probes + ends,
        probe_step=jnp.where(ends, 0, rows.probe_step + in_probe),
        probe_lp=probe_lp)
    return rows, ends, resume_lp


def _keep_step(rows: Rows, logits, lse, sampled, resumed, resume_lp, tables: TriggerTables,
               scfg: SamplerConfig) -> Rows:
    """THINK / ANSWER rows: keep the next queued or sampled token, count triggers, and act on
    EOS, `</think>`, a new trigger occurrence (start a probe) or the thinking budget."""
    dtr = scfg.dtr
    active = (rows.phase == THINK) | (rows.phase == ANSWER)
    think = rows.phase == THINK
    i = rows.length
    queued = i < rows.queued
    x = jnp.where(queued, _at(rows.tokens, i), sampled)
    x_lp = jnp.where(resumed, resume_lp, _at(logits, x) - lse)
    nxt, count, starts, first_here = tables.lookup(rows.dfa, x)
    starts &= active
    eos = active & jnp.isin(x, jnp.asarray(scfg.eos_ids, jnp.int32))
    natural = think & (x == scfg.think_end_id)
    kept = dataclasses.replace(
        rows,
        tokens=_put(rows.tokens, i, x, active),
        logprobs=_put(rows.logprobs, i, x_lp, active),
        forced=_put(rows.forced, i, queued, active),
        length=jnp.where(active, i + 1, i),
        dfa=jnp.where(active, nxt, rows.dfa),
        triggers=rows.triggers + jnp.where(active, count, 0),
        mark=jnp.where(starts, i, rows.mark),
        mark_dfa=jnp.where(starts, rows.dfa, rows.mark_dfa),
        mark_triggers=jnp.where(starts, rows.triggers, rows.mark_triggers),
        phase=jnp.where(eos, DONE, jnp.where(natural, ANSWER, rows.phase)),
        reason=jnp.where(think & eos, EOS, jnp.where(natural, NATURAL, rows.reason)))
    if dtr is None:
        kept = dataclasses.replace(kept, think_end=jnp.where(natural, i + 1, kept.think_end))
    else:
        # The exit suffix's log-prob at this token, in case a probe exits here later.
        exit_lp = jnp.where(resumed, rows.mark_exit_lp, logits[:, dtr.exit_ids[0]] - lse)
        kept = dataclasses.replace(kept, mark_exit_lp=jnp.where(starts, exit_lp, rows.mark_exit_lp))
        kept = _append(kept, natural, dtr.natural_ids)
        fire = think & ~queued & (count > 0) & (rows.num_probes < dtr.max_probes) & ~eos & ~natural
        # The budget waits for a put-back trigger to be complete (SPEC: the trigger goes back
        # whole, then thinking goes on).
        budget = (think & ~eos & ~natural & ~fire & (kept.length >= kept.queued)
                  & (kept.length >= scfg.think_budget))
        kept = _append(kept, budget, dtr.exit_ids)
        kept = dataclasses.replace(kept, phase=jnp.where(budget, ANSWER, kept.phase),
                                   reason=jnp.where(budget, BUDGET, kept.reason))
        kept = _start_probe(rows, kept, fire, first_here, exit_lp)
    full = kept.length >= kept.tokens.shape[1]
    return dataclasses.replace(kept, phase=jnp.where(full & active, DONE, kept.phase))


def _append(rows: Rows, mask: jax.Array, ids: tuple[int, ...]) -> Rows:
    """End thinking where `mask`: queue `ids` after the kept tokens; the answer starts after."""
    end = rows.length + len(ids)
    return dataclasses.replace(
        rows, tokens=_put_seq(rows.tokens, rows.length, ids, mask),
        queued=jnp.where(mask, end, rows.queued), think_end=jnp.where(mask, end, rows.think_end))


def _start_probe(before: Rows, kept: Rows, fire, first_here, exit_lp) -> Rows:
    """Where `fire`: instead of keeping the token just chosen (index i), roll back to the first
    token p of the trigger occurrence it confirmed (i itself if the occurrence began in it) and
    start a probe there. tokens[p:i+1] stay queued: the trigger to put back if the probe fails."""
    i = before.length
    p = jnp.where(first_here, i, before.mark)
    p_dfa = jnp.where(first_here, before.dfa, before.mark_dfa)
    p_triggers = jnp.where(first_here, before.triggers, before.mark_triggers)
    p_exit_lp = jnp.where(first_here, exit_lp, before.mark_exit_lp)

    def pick(rolled, kept_value):
        return jnp.where(fire, rolled, kept_value)

    return dataclasses.replace(
        kept, phase=pick(PROBE, kept.phase), length=pick(p, kept.length),
        queued=pick(i + 1, kept.queued), dfa=pick(p_dfa, kept.dfa),
        triggers=pick(p_triggers, kept.triggers), mark=pick(p, kept.mark),
        mark_dfa=pick(p_dfa, kept.mark_dfa), mark_triggers=pick(p_triggers, kept.mark_triggers),
        mark_exit_lp=pick(p_exit_lp, kept.mark_exit_lp), probe_step=pick(1, kept.probe_step),
        probe_lp=pick(0.0, kept.probe_lp))


def finish(rows: Rows, tables: TriggerTables, pad_id: int) -> dict[str, jax.Array]:
    """Per-row results; slots past a row's length hold `pad_id` (tokens), 0 and False."""
    kept = jnp.arange(rows.tokens.shape[1]) < rows.length[:, None]
    return dict(
        tokens=jnp.where(kept, rows.tokens, pad_id),
        logprobs=jnp.where(kept, rows.logprobs, 0.0),
        forced=kept & rows.forced,
        lengths=rows.length,
        # A trigger pending at the very end is confirmed by the end of the text.
        step_counts=1 + rows.triggers + tables.pending[rows.dfa],
        num_probes=rows.num_probes,
        exit_reasons=rows.reason,
        think_end=jnp.where(rows.think_end < 0, rows.length,
                            jnp.minimum(rows.think_end, rows.length)))

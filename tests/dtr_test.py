"""Dynamic Truncated Rollout against a literal host-side implementation of SPEC §3."""

import dataclasses
import re
from collections import Counter

import jax
import numpy as np
from sampling_fixtures import (
    DTR_CFG,
    DTR_PARAMS,
    DTR_TABLES,
    EOS,
    THINK_END,
    TINY,
    VOCAB,
    full_logprobs,
    random_prompts,
    teacher_forced_logprobs,
)

from stepgrpo_jax import sampling

TRIGGER = re.compile(r"(?<![A-Za-z])Wait(?![A-Za-z])")


def text_steps(tokens) -> int:
    """SPEC §2's text rule on the decoded completion."""
    text = re.sub(r"\s*([<>/])\s*", r"\1", "".join(VOCAB[t] for t in tokens))
    return 1 + len(TRIGGER.findall(text))


def _next_logprobs(context: list[int]) -> np.ndarray:
    """Next-token log-probs from a forward pass over the whole context (no cache)."""
    return full_logprobs(TINY, DTR_PARAMS, context)[-1]


def reference_dtr(prompt: list[int], scfg: sampling.SamplerConfig, log: list) -> dict:
    """SPEC §3 read literally, greedy: a Python loop that re-runs the model on the whole text.

    A trigger occurrence counts when the text rule sees it confirmed by the character after it;
    the token holding that character is the one that starts the probe, and p is the token that
    holds the occurrence's first character.
    """
    dtr = scfg.dtr
    budget = int(dtr.think_budget_frac * scfg.max_new_tokens)

    def text(tokens):
        return "".join(VOCAB[t] for t in tokens)

    def probe(kept):
        context, top1 = kept + list(dtr.probe_ids), []
        for t in range(1, dtr.probe_budget + 1):
            logp = _next_logprobs(prompt + context)
            token = int(np.argmax(logp))
            if t >= 2:
                top1.append(logp[token])
            if token == scfg.think_end_id:
                return float(np.exp(np.mean(top1))) if top1 else 0.0
            context.append(token)
        return 0.0

    tokens, forced, probes, reason = [], [], 0, None

    def append(ids):
        tokens.extend(ids)
        forced.extend([True] * len(ids))

    while reason is None:  # THINK
        if len(tokens) >= budget:
            append(dtr.exit_ids)
            reason = "budget"
            log.append("thinking budget")
            break
        before = text(tokens)
        token = int(np.argmax(_next_logprobs(prompt + tokens)))
        tokens.append(token)
        forced.append(False)
        if token in scfg.eos_ids:
            reason = "eos"
        elif token == scfg.think_end_id:
            append(dtr.natural_ids)
            reason = "natural"
        after = text(tokens)
        new = [m for m in TRIGGER.finditer(after) if len(before) <= m.end() < len(after)]
        if reason or not new:
            continue
        if probes == dtr.max_probes:
            log.append("free run trigger")
            continue
        p = int(np.argmax(np.cumsum([len(VOCAB[t]) for t in tokens]) > new[0].start()))
        trigger = tokens[p:]
        del tokens[p:], forced[p:]
        confidence = probe(tokens)
        probes += 1
        log.append(("probe", confidence))
        if confidence > dtr.threshold or p >= budget - dtr.exit_margin:
            append(dtr.exit_ids)
            reason = "early_exit" if confidence > dtr.threshold else "budget"
            log.append(reason if reason == "early_exit" else "budget at a probe")
        else:
            append(trigger)
            log.append("put back")
    think_end = len(tokens)
    while reason != "eos" and len(tokens) < scfg.max_new_tokens and tokens[-1] not in scfg.eos_ids:
        tokens.append(int(np.argmax(_next_logprobs(prompt + tokens))))  # ANSWER
        forced.append(False)
    R = scfg.max_new_tokens
    return dict(tokens=tokens[:R], forced=forced[:R], reason=reason, probes=probes,
                think_end=min(think_end, R))


def test_dtr_matches_reference():
    prompts = random_prompts(0, 32)
    out = sampling.Sampler(TINY, DTR_CFG, DTR_TABLES)(DTR_PARAMS, prompts, jax.random.key(0))
    log = []
    for row, prompt in enumerate(prompts):
        ref = reference_dtr(prompt, DTR_CFG, log)
        got = dict(tokens=out.completion(row), forced=out.forced[row, :out.lengths[row]].tolist(),
                   reason=out.exit_reason(row), probes=int(out.num_probes[row]),
                   think_end=int(out.think_end[row]))
        assert got == ref, f"row {row}"
        assert out.step_counts[row] == text_steps(ref["tokens"]), f"row {row}"
    # Every path of SPEC §3 was taken, and no confidence sat on the threshold (where float
    # rounding could decide).
    events = Counter(e if isinstance(e, str) else e[0] for e in log)
    reasons = Counter(out.exit_reason(row) for row in range(len(prompts)))
    assert {"natural", "early_exit", "budget", "eos"} <= set(reasons), reasons
    assert {"put back", "early_exit", "free run trigger", "budget at a probe",
            "thinking budget"} <= set(events), events
    confidences = np.array([e[1] for e in log if e[0] == "probe"])
    assert (confidences > 0).sum() > 5 and (confidences == 0).any()
    assert np.abs(confidences - DTR_CFG.dtr.threshold).min() > 1e-4


def test_discarded_probe_leaves_no_trace():
    """After a probe is discarded (at p, the trigger goes back), every later token is scored
    as if the probe never happened: its log-prob is the teacher-forced one of the final text,
    which never contained the probe."""
    prompts = random_prompts(0, 32)
    out = sampling.Sampler(TINY, DTR_CFG, DTR_TABLES)(DTR_PARAMS, prompts, jax.random.key(0))
    put_back = [r for r in range(len(prompts))
                if out.num_probes[r] > (out.exit_reason(r) == "early_exit")]
    assert len(put_back) >= 5
    for row in put_back:
        ref = teacher_forced_logprobs(TINY, DTR_PARAMS, prompts[row], out.completion(row))
        np.testing.assert_allclose(out.logprobs[row, :out.lengths[row]], ref, atol=1e-4)


def test_without_dtr_steps_are_still_counted():
    scfg = dataclasses.replace(DTR_CFG, dtr=None)
    prompts = random_prompts(0, 32)
    out = sampling.Sampler(TINY, scfg, DTR_TABLES)(DTR_PARAMS, prompts, jax.random.key(0))
    assert not out.forced.any() and not out.num_probes.any()
    reasons = {out.exit_reason(row) for row in range(len(prompts))}
    assert {"natural", "eos", "length"} <= reasons, reasons
    for row in range(len(prompts)):
        assert out.step_counts[row] == text_steps(out.completion(row))
    assert out.step_counts.max() > 2


def test_exit_after_first_step(qwen3_tokenizer_dir):
    """`eval.exit_after_first_step`: DTR's settings from the eval config close thinking at the
    first step boundary, whatever the probe says; rows without a trigger think as plainly."""
    from configs import default
    from stepgrpo_jax import tokenizer

    config = default.get_config()
    config.eval.exit_after_first_step = True
    tok = tokenizer.load(qwen3_tokenizer_dir)
    forcing = sampling.SamplerConfig.from_config(config, tok, evaluation=True).dtr
    assert forcing is not None
    config.eval.exit_after_first_step = False
    assert sampling.SamplerConfig.from_config(config, tok, evaluation=True).dtr is None
    # Its numbers on the tiny vocabulary's probe and exit ids.
    numbers = {f: getattr(forcing, f) for f in ("threshold", "probe_budget", "max_probes",
                                                "think_budget_frac", "exit_margin")}
    scfg = dataclasses.replace(DTR_CFG, dtr=dataclasses.replace(DTR_CFG.dtr, **numbers))
    plain_cfg = dataclasses.replace(DTR_CFG, dtr=None)
    prompts = random_prompts(1, 32)
    out = sampling.Sampler(TINY, scfg, DTR_TABLES)(DTR_PARAMS, prompts, jax.random.key(0))
    plain = sampling.Sampler(TINY, plain_cfg, DTR_TABLES)(DTR_PARAMS, prompts,
                                                          jax.random.key(0))
    exits = 0
    for row in range(len(prompts)):
        ref = plain.completion(row)
        ends = [i for i, t in enumerate(ref) if t in (THINK_END, EOS)]
        thinking = ref[:ends[0]] if ends else ref
        text = "".join(VOCAB[t] for t in thinking)
        # The first occurrence confirmed inside thinking (EOS and `</think>` end thinking).
        first = next((m for m in TRIGGER.finditer(text) if m.end() < len(text)), None)
        got = out.completion(row)
        if first is None:  # As plainly, up to DTR's suffix after a natural close.
            n = len(thinking) + 1
            assert got[:n] == ref[:n] and out.num_probes[row] == 0, f"row {row}"
            continue
        starts = np.cumsum([0] + [len(VOCAB[t]) for t in thinking])
        p = int(np.searchsorted(starts, first.start(), side="right")) - 1  # Its first token.
        assert got[:p] == ref[:p], f"row {row}"
        assert tuple(got[p:p + 3]) == DTR_CFG.dtr.exit_ids, f"row {row}"
        assert out.exit_reason(row) == "early_exit" and out.num_probes[row] == 1
        assert text_steps(got[:p]) == 1  # No step before the exit (the answer may have some).
        exits += 1
    assert 8 <= exits < len(prompts), exits

"""In-graph step counting: the token automaton against SPEC §2's text rule."""

import dataclasses
import re

import jax
import numpy as np
import pytest
from sampling_fixtures import TINY, biased_params

from stepgrpo_jax import sampling, tokenizer
from stepgrpo_jax.sampling.steps import DEAD, OUT

TAG_SPACE = re.compile(r"\s*([<>/])\s*")


def text_triggers(text: str, triggers=("Wait",)) -> int:
    """N_trig of SPEC §2, written out from the spec."""
    text = TAG_SPACE.sub(r"\1", text)
    return sum(len(re.findall(rf"(?<![A-Za-z]){t}(?![A-Za-z])", text)) for t in triggers)


def run_tables(tables: sampling.TriggerTables, ids) -> tuple[int, list[int]]:
    """Trigger count of a token sequence by the tables, and for each token that confirms an
    occurrence, the index of the first token of the (first) occurrence it confirms: the DTR
    boundary, tracked the way the sampler does."""
    state, count, mark, boundaries = OUT, 0, None, []
    for i, token in enumerate(ids):
        state, confirmed, starts, first_here = (int(x) for x in tables.lookup(state, token))
        if confirmed:
            boundaries.append(i if first_here else mark)
        mark = i if starts else mark
        count += confirmed
    return count + bool(tables.pending[state]), boundaries


def text_boundaries(pieces: list[str], triggers=("Wait",)) -> list[int]:
    """The same boundaries from the text: for each token holding the character that confirms an
    occurrence, the token holding that occurrence's first character."""
    text = "".join(pieces)
    ends = np.cumsum([len(p) for p in pieces])
    pattern = re.compile(rf"(?<![A-Za-z])(?:{'|'.join(triggers)})(?![A-Za-z])")
    out, seen = [], set()
    for m in pattern.finditer(text):
        if m.end() == len(text):
            continue  # Confirmed by the end of the text, not by a token.
        confirming = int(np.argmax(ends > m.end()))
        if confirming not in seen:
            seen.add(confirming)
            out.append(int(np.argmax(ends > m.start())))
    return out


CASES = [  # (pieces, triggers); the expected counts come from the text rule.
    (["W", "ait", ","], ("Wait",)),
    (["x", "Wait"], ("Wait",)),
    (["Wait", "ing"], ("Wait",)),
    (["Wait", ",", " Wait", "."], ("Wait",)),
    (["Wa", "", "it", "!"], ("Wait",)),  # An empty token (a padded vocabulary row).
    (["Wait5", "Wait"], ("Wait",)),
    (["é", "Wait", "\ufffd"], ("Wait",)),  # Non-ASCII letters and split UTF-8 are non-letters.
    (["</think>", "Wait", "<|im_end|>"], ("Wait",)),
    (["a Wait b Wait"], ("Wait",)),
    (["Wait", "Wait"], ("Wait",)),
    (["W", "W", "ait", " "], ("Wait",)),
    (["Wai", "Wait", ","], ("Wait",)),
    (["AWait", " ", "Wait", " <", "/", "think", ">"], ("Wait",)),
    (["Alter", "natively", ",", " Wait"], ("Wait", "Alternatively")),
    (["Wa", " ", "Wait", ", Wa"], ("Wait", "Wa")),
]


@pytest.mark.parametrize("pieces,triggers", CASES)
def test_tables_on_hand_written_sequences(pieces, triggers):
    vocab = sorted(set(pieces))
    tables = sampling.TriggerTables.from_strings(vocab, triggers)
    ids = [vocab.index(p) for p in pieces]
    count, boundaries = run_tables(tables, ids)
    assert count == text_triggers("".join(pieces), triggers)
    assert boundaries == text_boundaries(pieces, triggers)


def test_tables_on_random_sequences():
    pieces = ["Wait", " Wait", "W", "ait", "Wa", "it", "ing", "A", " ", ",", "\n\n", "</think>",
              "é", "5", "Waiting", "x Wait", "Wait!", "", " <", "/", "> ", "wait"]
    tables = sampling.TriggerTables.from_strings(pieces, ("Wait",))
    rng = np.random.default_rng(0)
    for _ in range(300):
        ids = rng.integers(0, len(pieces), size=rng.integers(1, 12)).tolist()
        count, boundaries = run_tables(tables, ids)
        assert count == text_triggers("".join(pieces[i] for i in ids)), ids
        assert boundaries == text_boundaries([pieces[i] for i in ids]), ids


def test_bad_triggers():
    for triggers in [(), ("Wait now",), ("</think>",), ("",)]:
        with pytest.raises(ValueError, match="ASCII letters"):
            sampling.TriggerTables.from_strings(["a"], triggers)


@pytest.fixture(scope="module")
def qwen3(qwen3_tokenizer_dir):
    tok = tokenizer.load(qwen3_tokenizer_dir)
    return tok, sampling.TriggerTables.from_tokenizer(tok, ("Wait",), 151_936)


def test_qwen3_tables(qwen3):
    tok, tables = qwen3
    wait, space_wait, waiting, comma, think_end, padded = 14190, 13824, 42104, 11, 151668, 151700
    assert tables.table.shape == (6, 151_936)  # OUT, DEAD, W, Wa, Wai, Wait.
    pending = int(np.flatnonzero(np.asarray(tables.pending))[0])
    assert [int(x) for x in tables.lookup(OUT, wait)] == [pending, 0, 1, 0]
    assert [int(x) for x in tables.lookup(OUT, space_wait)] == [pending, 0, 1, 0]
    assert [int(x) for x in tables.lookup(OUT, waiting)] == [DEAD, 0, 0, 0]
    assert [int(x) for x in tables.lookup(pending, comma)] == [OUT, 1, 0, 0]
    assert [int(x) for x in tables.lookup(pending, think_end)] == [OUT, 1, 0, 0]
    assert [int(x) for x in tables.lookup(pending, padded)] == [pending, 0, 0, 0]
    ids = tok.encode("Wait, Waiting... (Wait)AWait\n\nWait</think>", add_special_tokens=False)
    assert run_tables(tables, ids)[0] == 3


def _stress_bias(tok) -> dict[int, float]:
    """Logit offsets: triggers and what may stand around them most, their pieces and look-alikes
    ("Waiting", "AndWait", ".wait", ...) a little less; EOS ends a few rows early."""
    def first_id(text):
        return tok.encode(text, add_special_tokens=False)[0]

    look_alikes = {i: 10.0 for t, i in tok.get_vocab().items() if "Wait" in t or "wait" in t}
    pieces = {first_id(p): 10.5 for p in ["W", "ait", " W", "Wa", "it", "AW", "ing", "5", "é"]}
    separators = {first_id(p): 11.0 for p in [",", ".", "!", "\n\n", "\n", " ", "</think>", "<",
                                              ">", "/", " /", " <"]}
    triggers = {first_id(p): 12.0 for p in ["Wait", " Wait"]}
    return look_alikes | pieces | separators | triggers | {151645: 6.0}


@pytest.mark.slow
@pytest.mark.parametrize("dtr", [False, True])
def test_step_counts_match_text_rule_on_stress_corpus(qwen3, dtr):
    """A tiny model with Qwen3's vocabulary that writes trigger look-alikes, sampled at
    temperature 1: every in-graph step count equals the text rule on the decoded completion."""
    tok, tables = qwen3
    cfg = TINY.replace(vocab_size=151_936)
    params = biased_params(cfg, 0, _stress_bias(tok))
    scfg = sampling.SamplerConfig(max_new_tokens=64, prompt_buckets=(16,), temperature=1.0,
                                  cache_dtype="float32")
    if dtr:
        scfg = dataclasses.replace(scfg, dtr=sampling.DTRConfig.from_tokenizer(
            tok, threshold=0.0, probe_budget=4, max_probes=3, exit_margin=8))
    prompts = [tok.encode(tokenizer.chat_prompt(f"Problem {i}."), add_special_tokens=False)
               for i in range(32)]
    out = sampling.Sampler(cfg, scfg, tables)(params, prompts, jax.random.key(0))
    texts = [tok.decode(out.completion(row)) for row in range(len(prompts))]
    expected = [1 + text_triggers(text) for text in texts]
    assert out.step_counts.tolist() == expected
    print(f"dtr={dtr}: {len(texts)} completions, {sum(expected) - len(texts)} triggers, "
          f"{sum(out.lengths)} tokens, {out.num_probes.sum()} probes")
    assert sum(expected) - len(expected) > 100  # Plenty of triggers ...
    assert sum("Waiting" in t or "AWait" in t for t in texts) > 5  # ... and near misses.
    if dtr:
        assert out.num_probes.sum() > 10

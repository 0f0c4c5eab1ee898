r"""The overthinking testbed: sums of small numbers, teacher traces whose later steps correct
the first attempt, and a small byte-level tokenizer, all generated offline from a seed.

Difficulty d: d + 2 distinct terms from 1-9 ("What is 3+5+9?" is d = 1: 504 problems). Every
number is a single token, and the terms are distinct, so the next term of a sum is the one that
follows the previous term in the prompt (an induction-head copy by value).

A teacher trace (Qwen3 thinking format) has these parts:
- **The first attempt** states the sum at once: "The sum is 19." For a small model this is one
  prediction from all the terms, reliable for three terms and not for five. The teacher's own
  first attempt is also wrong (a near miss) with a chance that rises with difficulty
  (`first_slip_prob`: 0% at d = 1, 50% at d = 3), so the warm start learns a first attempt
  that is cheap and, on hard problems, unreliable.
- **A commitment** in a tenth of the traces (`COMMIT`), whatever the first attempt: the
  teacher states it as the final answer, "**Final Answer**\n\boxed{19}", and closes thinking
  if it is right, or goes on to the careful check ("Wait") if it is wrong. This line is the
  DTR probe's own text (`PROBE_PROMPT`, SPEC §3) at the first step boundary, so what the model
  learns to write after it, `</think>` or "Wait", is the chance that its first attempt is
  right: the probe's confidence there is calibrated (high for easy sums, low for hard ones)
  rather than a copy of the stated sum, sure of itself whether right or not.
- **The careful check**: "Wait, step by step: 3+5=8, +9=17, +2=19." Running sums, each a
  look-up from two tokens a fixed distance back, which a small model learns reliably.
  It does not look at the first attempt, so it corrects a wrong one without having to detect
  the error. It is *necessary* when the first attempt was wrong, *redundant* when it was right.
- **Re-checks** (0 to `MAX_RECHECKS` after the check), redundant: "Wait, double-check: sum=19. Yes."

Then `\n**Final Answer**\n\boxed{19}\n</think>\n\nThe answer is \boxed{19}.<|im_end|>` (a fifth
of the traces, commitments included, close with `EXIT_SUFFIX` alone, as after a DTR exit; such
a commitment to a wrong first attempt has no box). The answer is always the check's sum, or
the first attempt's where thinking closed after the commitment. Steps are
lines, so a step boundary follows "\n" and the probe reads as the teacher's own closing.
Forcing `</think>` at the first boundary (`eval.exit_after_first_step`) measures what the later
steps are worth.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Collection, Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from stepgrpo_jax import tokenizer as tokenizer_lib
from stepgrpo_jax.sampling.config import EXIT_SUFFIX, PROBE_PROMPT  # SPEC §3 defaults.

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
# An upper bound only: BPE runs out of pairs to merge (every word whole) below 400 tokens.
MAX_VOCAB = 1024
MAX_RECHECKS = 3  # Re-checks after the careful check: uniform in 0..MAX_RECHECKS.
# Chance that the first attempt is committed to as the final answer (the probe's own text), to
# close thinking if right (as a DTR exit at the first step boundary would) or go on to the check.
COMMIT = 0.1
PLAIN_CLOSE = 0.2  # Chance that thinking ends with EXIT_SUFFIX alone, as after a DTR early exit.

_PROBLEM = re.compile(r"What is (\d+(?:\+\d+)+)\?")
_FIRST = re.compile(r"<think>\nThe sum is (\d+)\.")
_SPECIAL = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))
_CHECK = "Wait, step by step: {chain}."
# Re-checks of the checked sum s: they only restate s, so a tiny model learns them by copying.
_RECHECKS = (
    "Wait, let me check again. Sum={s}. Yes.",
    "Wait, is the sum={s}? Yes.",
    "Wait, double-check: sum={s}. Yes.",
)


def first_slip_prob(difficulty: int) -> float:
    """Chance that the teacher's first attempt (the sum stated at once) is wrong."""
    return min(0.25 * (difficulty - 1), 0.75)


def terms_of(problem: str) -> list[int]:
    """The terms of a problem's text, "What is 3+5+9?" -> [3, 5, 9]."""
    return [int(t) for t in _PROBLEM.fullmatch(problem).group(1).split("+")]


def first_answer(response: str) -> int | None:
    """The sum a response's first attempt states ("The sum is 19."), None if it has none."""
    m = _FIRST.match(response)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------------
# Problems.
# ---------------------------------------------------------------------------------------------


def _problem(difficulty: int, rng: random.Random) -> dict[str, Any]:
    terms = rng.sample(range(1, 10), difficulty + 2)
    return {"problem": f"What is {'+'.join(map(str, terms))}?", "answer": str(sum(terms)),
            "difficulty": difficulty}


def make_problems(n: int, seed: int | str, difficulties: Sequence[int] = (1, 2, 3),
                  exclude: Collection[str] = (), distinct: bool = True) -> list[dict[str, Any]]:
    """n problems (`problem`, `answer`, `difficulty`), difficulties in turn, deterministic in
    `seed`; none has its text in `exclude` (held-out problems), none repeats if `distinct`."""
    if not difficulties or min(difficulties) < 1:
        raise ValueError(f"difficulties must be >= 1, got {difficulties}")
    rng = random.Random(f"problems:{seed}")
    seen = set(exclude)
    rows = []
    for i in range(n):
        d = difficulties[i % len(difficulties)]
        for _ in range(1000):  # Rejection sampling; d = 1 has 504 problems in all.
            row = _problem(d, rng)
            if row["problem"] not in seen:
                break
        else:
            raise ValueError(f"too few difficulty-{d} problems left for {n} rows")
        if distinct:
            seen.add(row["problem"])
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Teacher traces.
# ---------------------------------------------------------------------------------------------


def _near_miss(answer: int, rng: random.Random) -> int:
    """A wrong sum 1 or 2 away from the answer."""
    return answer + rng.choice((-2, -1, 1, 2))


def _final(answer: int) -> str:
    return f"{PROBE_PROMPT}{{{answer}}}\n"


def make_trace(problem: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """One teacher response to `problem` (Qwen3 thinking format, ending in `<|im_end|>`).

    Returns `response`; `steps` = 1 + `necessary` + `redundant` (SPEC §2 step count: the
    careful check and every re-check open with "Wait"); `first_correct`.
    """
    terms = terms_of(problem["problem"])
    answer = sum(terms)
    first_correct = rng.random() >= first_slip_prob(problem["difficulty"])
    first = answer if first_correct else _near_miss(answer, rng)
    sums = [sum(terms[:i + 1]) for i in range(len(terms))]
    chain = f"{terms[0]}" + ", ".join(f"+{y}={s}" for y, s in zip(terms[1:], sums[1:], strict=True))
    parts = ["<think>\n", f"The sum is {first}.\n"]
    commit = rng.random() < COMMIT
    plain = rng.random() < PLAIN_CLOSE  # Thinking closes with EXIT_SUFFIX alone, no box.
    checks = []
    if not (commit and first_correct):  # Else thinking closes right after the first attempt.
        if commit and not plain:  # The box of a wrong first attempt, then the check.
            parts.append(_final(first))
        checks = [_CHECK.format(chain=chain)]
        checks += [r.format(s=answer)
                   for r in rng.sample(_RECHECKS, rng.randint(0, MAX_RECHECKS))]
        plain = rng.random() < PLAIN_CLOSE
    parts += [check + "\n" for check in checks]
    parts += [EXIT_SUFFIX if plain else _final(answer) + EXIT_SUFFIX[1:],
              f"The answer is \\boxed{{{answer}}}.<|im_end|>"]
    necessary = int(not first_correct)
    return {"response": "".join(parts), "steps": 1 + len(checks), "necessary": necessary,
            "redundant": len(checks) - necessary, "first_correct": first_correct}


def make_sft_rows(n: int, seed: int | str, difficulties: Sequence[int] = (1, 2, 3),
                  exclude: Collection[str] = ()) -> list[dict[str, Any]]:
    """Warm-start rows: `problem`, `answer`, `difficulty`, `response` and the trace's counts.
    Problems may repeat (with fresh traces) so the habit, not the problem, is what is learnt."""
    rng = random.Random(f"traces:{seed}")
    return [{**p, **make_trace(p, rng)}
            for p in make_problems(n, seed, difficulties, exclude, distinct=False)]


def write_jsonl(rows: Sequence[dict[str, Any]], path: str) -> str:
    """One JSON object per line (the format `data.py` reads); returns `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return path


def summarize(rows: Sequence[dict[str, Any]],
              tok: PreTrainedTokenizerBase | None = None) -> dict[str, dict[str, float]]:
    """Trace statistics of SFT rows, over all rows and per difficulty; token counts of the
    responses too when a tokenizer `tok` is given."""
    lengths = [len(tok.encode(r["response"], add_special_tokens=False)) if tok else 0
               for r in rows]
    groups = {"all": list(zip(rows, lengths, strict=True))}
    for d in sorted({r["difficulty"] for r in rows}):
        groups[f"difficulty_{d}"] = [(r, n) for r, n in groups["all"] if r["difficulty"] == d]
    return {name: _stats(group, tok is not None) for name, group in groups.items()}


def _stats(group: list[tuple[dict[str, Any], int]], with_tokens: bool) -> dict[str, float]:
    rows = [r for r, _ in group]
    extra = sum(r["steps"] - 1 for r in rows) or 1  # Steps beyond the first attempt.
    out = {"rows": len(rows),
           "steps_mean": sum(r["steps"] for r in rows) / len(rows),
           "first_wrong": sum(not r["first_correct"] for r in rows) / len(rows),
           "necessary_share": sum(r["necessary"] for r in rows) / extra,
           "redundant_share": sum(r["redundant"] for r in rows) / extra}
    if with_tokens:
        lengths = sorted(n for _, n in group)
        out.update(tokens_mean=sum(lengths) / len(lengths),
                   tokens_p99=lengths[int(0.99 * (len(lengths) - 1))], tokens_max=lengths[-1])
    return out


# ---------------------------------------------------------------------------------------------
# Tokenizer.
# ---------------------------------------------------------------------------------------------


def build_tokenizer(out_dir: str, seed: int = 0) -> str:
    """Trains a byte-level BPE on generated prompts and traces; saves it in HF format.

    Numbers of the corpus (up to 40), words and "Wait" end up one token each. Byte-level: any
    text round-trips. Deterministic in `seed`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rows = make_sft_rows(2000, f"tokenizer:{seed}", difficulties=(1, 2, 3, 4))
    # Special tokens are cut out first: their pieces ("<|", "im") would waste merges.
    corpus = [piece for r in rows
              for piece in _SPECIAL.split(tokenizer_lib.problem_prompt(r["problem"])
                                          + r["response"]) if piece]
    tok = Tokenizer(models.BPE())
    # Every newline is a token of its own, so text split after a newline encodes as the two
    # halves do: the probe and exit suffix, appended to a step that ends in "\n", get the same
    # ids as the teacher's closing of thinking ("\n\n" as one token would differ).
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=MAX_VOCAB, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>",
                                   chat_template=tokenizer_lib.CHAT_TEMPLATE,
                                   clean_up_tokenization_spaces=False)
    fast.save_pretrained(out_dir)
    return out_dir


# ---------------------------------------------------------------------------------------------
# The whole testbed.
# ---------------------------------------------------------------------------------------------


def prepare(out_dir: str, seed: int = 0, n_train: int = 1500, n_eval: int = 300,
            n_sft: int = 6000, difficulties: Sequence[int] = (1, 2, 3)) -> dict[str, str]:
    """Writes `tokenizer/`, `train.jsonl`, `eval.jsonl` (problem, answer, difficulty) and
    `sft.jsonl` (+ response) under `out_dir`; returns their paths. Eval problems are distinct
    and appear in neither train nor SFT rows."""
    held_out = make_problems(n_eval, f"{seed}/eval", difficulties)
    eval_texts = {p["problem"] for p in held_out}
    train = make_problems(n_train, f"{seed}/train", difficulties, exclude=eval_texts,
                          distinct=False)
    sft = make_sft_rows(n_sft, f"{seed}/sft", difficulties, exclude=eval_texts)
    return {
        "tokenizer": build_tokenizer(os.path.join(out_dir, "tokenizer"), seed),
        "train": write_jsonl(train, os.path.join(out_dir, "train.jsonl")),
        "eval": write_jsonl(held_out, os.path.join(out_dir, "eval.jsonl")),
        "sft": write_jsonl(sft, os.path.join(out_dir, "sft.jsonl")),
    }

r"""The overthinking testbed: sums of small numbers worked as running sums, teacher traces with
a re-checking habit, and a small byte-level tokenizer, all generated offline from a seed.

A small Qwen3-architecture model warm-started on these traces learns the teacher's habit: a
first attempt that sometimes slips on one small addition, a "Wait" step per fix, then 0-4
redundant "Wait" re-checks of an answer already right. Step-GRPO should learn to drop the
re-checks.

Difficulty d: d + 2 distinct terms from 1-9 ("What is 3+5+9?" is d = 1: 504 problems). The
first attempt is a chain of d + 1 small steps, "3+5=8, +9=17.", each adding one term to the sum
just before it. Everything a tiny transformer must learn is a short look-up, so one warm-starts
in a few hundred SFT steps: every number is a single token (a sum is one prediction from two
tokens a fixed distance back, not a digit-by-digit carry), and the terms are distinct, so the
next term is the one that follows the previous term in the prompt (an induction-head copy by
value, where repeated terms would need counting).

Harder problems have more steps and the teacher slips more readily on each (`slip_prob`), so
first attempts fail more often. A slip (at most one per chain) drops the carry (8+9=7) or is
off by one; later steps go on from the wrong sum, so the chain ends wrong. A fix redoes the
wrong step and the rest of the chain from there: "Wait, 8+9=17, not 7, +2=19." (the redone
tail may slip again: at most two fixes).

The DTR probe (SPEC §3) is in-distribution by construction. Steps are lines, so a step boundary
follows "\n" and the probe text `PROBE_PROMPT` reads exactly as the teacher's own closing
`PROBE_PROMPT + "{19}" + EXIT_SUFFIX`. The teacher also sometimes writes a premature
`**Final Answer** \boxed{18}` for a wrong answer and goes on with "Wait" instead of
`</think>`. So in the data `</think>` follows a boxed answer exactly when that answer is right:
a probe ends with `</think>` (confidence > 0) only if the model judges its current answer right.
A fifth of the traces close thinking with `EXIT_SUFFIX` right after a step, as DTR does on an
early exit, so the answer after an exit is in-distribution too.
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
MAX_REDUNDANT = 4  # Redundant re-checks per trace: uniform in 0..MAX_REDUNDANT.
MAX_FIXES = 2  # Necessary fixes per trace; the last allowed fix never slips.
PREMATURE = 0.5  # Chance of a premature "Final Answer" at each wrong answer before its fix.
PLAIN_CLOSE = 0.2  # Chance that thinking ends with EXIT_SUFFIX alone, as after a DTR early exit.

_PROBLEM = re.compile(r"What is (\d+(?:\+\d+)+)\?")
_SPECIAL = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))
# Redundant re-checks of a right sum s: each confirms, none changes the answer, none starts like
# a fix ("Wait, 8+9=17, not ..."). They only restate s: no arithmetic for a tiny model to
# learn beyond the chain's.
_CHECKS = (
    "Wait, let me check again. Sum={s}. Yes.",
    "Wait, is the sum={s}? Yes.",
    "Wait, let me add them once more. Right, sum={s}.",
    "Wait, double-check: sum={s}. Yes.",
)


def slip_prob(difficulty: int) -> float:
    """Chance that the teacher gets one step of the chain wrong, rising with difficulty."""
    return min(0.04 + 0.02 * difficulty, 0.3)


def terms_of(problem: str) -> list[int]:
    """The terms of a problem's text, "What is 3 + 5 + 9?" -> [3, 5, 9]."""
    return [int(t) for t in _PROBLEM.fullmatch(problem).group(1).split("+")]


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


def _slip(x: int, y: int, rng: random.Random) -> int:
    """A wrong x + y: the carry dropped where there is one, else off by one."""
    if x % 10 + y >= 10:
        return x + y - 10
    return x + y + 1 if x + y == 0 or rng.random() < 0.5 else x + y - 1


def _chain(x: int, terms: Sequence[int], q: float,
           rng: random.Random) -> tuple[list[str], int, int | None]:
    """Running sums from x over `terms`, each step wrong with chance q until one is. Returns the
    step texts, the final (stated) sum and the index of the wrong step (None when all are right).
    One slip per chain: its error carries to the end, so a chain is right iff its sum is."""
    steps, wrong = [], None
    for i, y in enumerate(terms):
        z = _slip(x, y, rng) if wrong is None and rng.random() < q else x + y
        if z != x + y:
            wrong = i
        steps.append(f"+{y}={z}")
        x = z
    return steps, x, wrong


def _final(answer: int) -> str:
    return f"{PROBE_PROMPT}{{{answer}}}\n"


def make_trace(problem: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """One teacher response to `problem` (Qwen3 thinking format, ending in `<|im_end|>`).

    Returns `response`; `steps` = 1 + `necessary` + `redundant` (SPEC §2 step count);
    `first_correct`; and `settled`, one flag per "Wait": whether the answer stated just before
    that step boundary is already right (where a DTR probe should be confident).
    """
    terms = terms_of(problem["problem"])
    answer = sum(terms)
    q = slip_prob(problem["difficulty"])
    steps, current, wrong = _chain(terms[0], terms[1:], q, rng)
    # Running sums before each step: prefix[i] is the right sum before terms[i + 1] is added.
    prefix = [sum(terms[:i + 1]) for i in range(len(terms) - 1)]
    parts = ["<think>\n", f"{terms[0]}" + ", ".join(steps) + ".\n"]
    settled, first_correct = [], current == answer
    while wrong is not None:
        if rng.random() < PREMATURE:
            parts.append(_final(current))
        x, y = prefix[wrong], terms[wrong + 1]
        bad = steps[wrong].rpartition("=")[2]
        last_fix = len(settled) + 1 >= MAX_FIXES
        tail, current, later = _chain(x + y, terms[wrong + 2:], 0.0 if last_fix else q, rng)
        parts.append(", ".join([f"Wait, {x}+{y}={x + y}, not {bad}", *tail]) + ".\n")
        settled.append(False)
        steps = steps[:wrong] + [f"+{y}={x + y}"] + tail
        wrong = None if later is None else wrong + 1 + later
    redundant = rng.sample(_CHECKS, rng.randint(0, MAX_REDUNDANT))
    parts += [check.format(s=answer) + "\n" for check in redundant]
    settled += [True] * len(redundant)
    close = EXIT_SUFFIX if rng.random() < PLAIN_CLOSE else _final(answer) + EXIT_SUFFIX[1:]
    parts += [close, f"The answer is \\boxed{{{answer}}}.<|im_end|>"]
    necessary = len(settled) - len(redundant)
    return {"response": "".join(parts), "steps": 1 + len(settled), "necessary": necessary,
            "redundant": len(redundant), "first_correct": first_correct, "settled": settled}


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

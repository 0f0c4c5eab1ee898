"""Transformers `generate` on the problems of a greedy evaluation of ours, graded the same way:
accuracy, mean response tokens, wall time, and how many completions equal ours.

  python main.py --config configs/eval.py:bench=gsm8k --workdir /tmp/ev \
      --config.model_dir=/tmp/qwen25 --config.eval.max_problems=200 \
      --config.eval.temperature=0 --config.eval.max_new_tokens=384 ...
  python tools/eval_vs_transformers.py --eval_dir /tmp/ev [--batch 16] [--json OUT]

Everything comes from the evaluation's workdir (`config.json` and the results file): the model
(an HF directory), the benchmark files, `eval.max_problems`, `eval.max_new_tokens`, the data
fields. The prompts are built as the evaluation builds them (`tokenizer.encode_problem`: the
model's chat template) and both sides stop at `tokenizer.stop_ids`. Transformers runs in float32,
greedy, on left-padded batches of `--batch` prompts taken in order. A completion equals ours when
its text (special tokens kept) and its token count do: our results file keeps the text, not the
ids. Grading is `grading.Grader` on the boxed answers, as in `stepgrpo_jax.evaluate`.
"""

import functools
import json
import os
import time

import numpy as np
import torch
from absl import app, flags
from tqdm import tqdm
from transformers import AutoModelForCausalLM

from stepgrpo_jax import data, grading, logs, rewards, tokenizer

EVAL_DIR = flags.DEFINE_string("eval_dir", None, "Workdir of a greedy `mode=eval` run of ours.",
                               required=True)
BATCH = flags.DEFINE_integer("batch", 16, "Prompts per transformers `generate` call.")
THREADS = flags.DEFINE_integer("threads", None, "torch CPU threads (default: torch's).")
JSON = flags.DEFINE_string("json", None, "Write the figures and per-problem rows here "
                                         "(default: EVAL_DIR/transformers.json).")


def load_run(eval_dir: str) -> tuple[dict, dict]:
    """The run's config and results; ValueError unless it was a greedy run of one process."""
    with open(os.path.join(eval_dir, "config.json")) as f:
        config = json.load(f)
    out = config["eval"]["out"] or os.path.join(eval_dir, "eval.json")
    with open(out) as f:
        results = json.load(f)
    if config["mode"] != "eval" or config["eval"]["temperature"] != 0:
        raise ValueError(f"{eval_dir}: expected a greedy evaluation (mode=eval, "
                         f"eval.temperature=0), got mode={config['mode']}, "
                         f"temperature={config['eval']['temperature']}")
    if config["eval"]["num_samples"] != 1 or config["eval"]["exit_after_first_step"]:
        raise ValueError(f"{eval_dir}: expected num_samples=1 and no exit_after_first_step")
    return config, results


def generate(hf_model, tok, prompts: list[list[int]], max_new_tokens: int,
             stops: tuple[int, ...], batch: int) -> list[list[int]]:
    """Greedy completions, each cut after its first stop id (kept, as our sampler keeps it)."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else stops[0]
    out = []
    for start in tqdm(range(0, len(prompts), batch), desc="transformers generate",
                      unit="batch", leave=False):
        chunk = prompts[start:start + batch]
        width = max(map(len, chunk))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        with torch.no_grad():
            gen = hf_model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                    do_sample=False, eos_token_id=list(stops), pad_token_id=pad)
        for row in gen[:, width:].tolist():
            ends = [i for i, t in enumerate(row) if t in stops]
            out.append(row[:ends[0] + 1] if ends else row)
    return out


def compare(eval_dir: str, batch: int) -> dict:
    config, results = load_run(eval_dir)
    model_dir = config["model_dir"]
    tok = tokenizer.load(config["tokenizer_dir"] or model_dir)
    stops = tokenizer.stop_ids(tok, model_dir)
    max_new = config["eval"]["max_new_tokens"]
    hf_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    summary = {"model_dir": model_dir, "max_new_tokens": max_new, "stop_ids": list(stops),
               "batch": batch, "torch_threads": torch.get_num_threads(), "benchmarks": {}}
    rows = {}
    with grading.Grader(rewards.RewardConfig.from_config(config)) as grader:
        for path in data.as_list(config["eval"]["files"]):
            name = os.path.splitext(os.path.basename(path))[0]
            ours = results["benchmarks"][name]["records"]
            # Loaded as the evaluation loads them, so the records' indices point at the same rows.
            source, _ = data.load_from_config(
                config["data"], [path], functools.partial(tokenizer.problem_prompt_lengths, tok),
                max(config["sampling"]["prompt_buckets"]))
            problems = [source[r["problem"]] for r in ours]
            moved = [r["source"] for r, p in zip(ours, problems, strict=True)
                     if r["source"] != p.source]
            if moved:
                raise ValueError(f"{path} changed since the evaluation: {moved[0]} is not where "
                                 "the results say")
            prompts = [tokenizer.encode_problem(tok, p.problem) for p in problems]
            t0 = time.perf_counter()
            theirs = generate(hf_model, tok, prompts, max_new, stops, batch)
            seconds = time.perf_counter() - t0
            texts = tok.batch_decode(theirs, skip_special_tokens=False)
            boxes = [grading.answer_boxes(t) for t in texts]
            correct = grader.grade([p.answer for p in problems], boxes).correct
            equal = [t == r["text"] and len(c) == r["tokens"]
                     for t, c, r in zip(texts, theirs, ours, strict=True)]
            summary["benchmarks"][name] = {
                "num_problems": len(problems),
                "transformers": {"accuracy": float(np.mean(correct)),
                                 "format_rate": float(np.mean([bool(b) for b in boxes])),
                                 "response_tokens_mean": float(np.mean([len(c) for c in theirs])),
                                 "generate_seconds": round(seconds, 1)},
                "ours": {k: results["benchmarks"][name][k] for k in
                         ("accuracy", "format_rate", "response_tokens_mean")},
                "completions_equal": int(sum(equal)),
                "graded_alike": int(sum(bool(c) == r["correct"]
                                        for c, r in zip(correct, ours, strict=True))),
            }
            rows[name] = [{"problem": r["problem"], "source": p.source, "equal": e,
                           "ours_correct": r["correct"], "theirs_correct": bool(c),
                           "ours_tokens": r["tokens"], "theirs_tokens": len(ids), "text": t}
                          for r, p, e, c, ids, t in zip(ours, problems, equal, correct, theirs,
                                                        texts, strict=True)]
    return {**summary, "rows": rows}


def main(argv):
    del argv
    logs.quiet_logs()
    if THREADS.value:
        torch.set_num_threads(THREADS.value)
    try:
        result = compare(EVAL_DIR.value, BATCH.value)
    except (ValueError, OSError, KeyError) as e:  # Not a usable eval workdir: say why.
        raise SystemExit(f"error: {e}") from None
    for name, b in result["benchmarks"].items():
        t, o = b["transformers"], b["ours"]
        print(f"{name}: {b['num_problems']} problems, {result['max_new_tokens']} new tokens at "
              f"most\n  ours:         accuracy {o['accuracy']:.1%}, boxed {o['format_rate']:.1%}, "
              f"{o['response_tokens_mean']:.1f} tokens\n  transformers: accuracy "
              f"{t['accuracy']:.1%}, boxed {t['format_rate']:.1%}, "
              f"{t['response_tokens_mean']:.1f} tokens, generate {t['generate_seconds']} s\n"
              f"  completions equal: {b['completions_equal']}/{b['num_problems']}; graded alike: "
              f"{b['graded_alike']}/{b['num_problems']}")
    out = JSON.value or os.path.join(EVAL_DIR.value, "transformers.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)

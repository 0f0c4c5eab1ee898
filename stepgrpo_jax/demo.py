"""The overthinking testbed end to end: build the data, warm-start a small Qwen3 on teacher
traces (mode sft), measure it, train it with a GRPO variant, measure again.

`python main.py --config configs/demo.py` runs this with Step-GRPO; `tools/overthinking_bench.py`
runs it for several methods and seeds from one shared warm start.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import jax
import ml_collections

from stepgrpo_jax import evaluate, sft, testbed, trainer

SUMMARY_KEYS = ("accuracy", "response_tokens_mean", "steps_mean")


def prepare_data(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
    """Generates the testbed (deterministic by `config.demo.data_seed`) under workdir."""
    d = config.demo
    return testbed.prepare(os.path.join(workdir, "testbed"), seed=d.data_seed,
                           n_train=d.n_train, n_eval=d.n_eval, n_sft=d.n_sft,
                           difficulties=tuple(d.difficulties))


def override(config: ml_collections.ConfigDict, **changes: Any) -> ml_collections.ConfigDict:
    """A copy of `config` with dotted fields changed (`data.train_files=...`)."""
    c = copy.deepcopy(config)
    with c.unlocked():
        for key, value in changes.items():
            node = c
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value
    return c


def warm_start(config: ml_collections.ConfigDict, paths: dict[str, str], workdir: str) -> str:
    """Supervised training on the traces; returns the checkpoint directory."""
    d = config.demo
    c = override(config, mode="sft", tokenizer_dir=paths["tokenizer"], total_steps=d.sft_steps,
              **{"data.train_files": (paths["sft"],), "data.response": "response",
                 "optim.learning_rate": d.sft_learning_rate, "optim.schedule": "cosine",
                 "optim.warmup_steps": d.sft_warmup_steps, "eval.files": ()})
    sft.train(c, workdir)
    return os.path.join(workdir, "checkpoints")


def measure(config: ml_collections.ConfigDict, model_dir: str, paths: dict[str, str],
            workdir: str) -> dict[str, Any]:
    """Held-out accuracy, tokens and steps with plain sampling; also by difficulty."""
    c = override(config, mode="eval", model_dir=model_dir, tokenizer_dir=paths["tokenizer"],
              **{"eval.files": (paths["eval"],), "eval.out": os.path.join(workdir, "eval.json")})
    result = evaluate.run(c, workdir)["benchmarks"]["eval"]
    difficulty = {f"{paths['eval']}:{i + 1}": d
                  for i, d in enumerate(_difficulties(paths["eval"]))}
    by: dict[int, list[dict]] = {}
    for r in result["records"]:
        by.setdefault(difficulty[r["source"]], []).append(r)
    result["by_difficulty"] = {
        str(d): {"accuracy": sum(r["correct"] for r in rs) / len(rs),
                 "response_tokens_mean": sum(r["tokens"] for r in rs) / len(rs),
                 "steps_mean": sum(r["steps"] for r in rs) / len(rs), "count": len(rs)}
        for d, rs in sorted(by.items())}
    return result


def _difficulties(path: str) -> list[int]:
    with open(path) as f:
        return [json.loads(line)["difficulty"] for line in f if line.strip()]


def reinforce(config: ml_collections.ConfigDict, start_dir: str, paths: dict[str, str],
              workdir: str) -> str:
    """GRPO training (the variant of `config.reward.kind` / `config.dtr`) from `start_dir`."""
    c = override(config, mode="grpo", model_dir=start_dir, tokenizer_dir=paths["tokenizer"],
              **{"data.train_files": (paths["train"],), "eval.files": ()})
    trainer.train(c, workdir)
    return os.path.join(workdir, "checkpoints")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Warm start, measure, Step-GRPO, measure; writes and prints `summary.json`."""
    paths = prepare_data(config, workdir)
    sft_dir = warm_start(config, paths, os.path.join(workdir, "sft"))
    before = measure(config, sft_dir, paths, os.path.join(workdir, "sft"))
    grpo_dir = reinforce(config, sft_dir, paths, os.path.join(workdir, "grpo"))
    after = measure(config, grpo_dir, paths, os.path.join(workdir, "grpo"))
    summary = {"before": {k: before[k] for k in SUMMARY_KEYS},
               "after": {k: after[k] for k in SUMMARY_KEYS},
               "by_difficulty": {"before": before["by_difficulty"],
                                 "after": after["by_difficulty"]}}
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        print(format_summary(summary))
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    b, a = summary["before"], summary["after"]
    rows = [f"{'':<22}{'warm start':>12}{'Step-GRPO':>12}{'change':>10}"]
    for key, label, fmt in (("accuracy", "accuracy", "{:.1%}"),
                            ("response_tokens_mean", "response tokens", "{:.1f}"),
                            ("steps_mean", "reasoning steps", "{:.2f}")):
        if key == "accuracy":  # In points: a relative change of a rate reads wrongly.
            change = f"{100 * (a[key] - b[key]):+.1f} pt"
        else:
            change = f"{a[key] / b[key] - 1:+.1%}" if b[key] else "-"
        rows.append(f"{label:<22}{fmt.format(b[key]):>12}{fmt.format(a[key]):>12}{change:>10}")
    return "\n".join(rows)

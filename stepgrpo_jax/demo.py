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
    """Supervised training on the traces; returns `warm_start_dir(config, workdir)`.

    With `demo.sft_more_steps`, a second round continues from the first's checkpoint with a
    fresh optimiser, the next seed's data order and `demo.sft_more_learning_rate` (a warm
    restart of the cosine schedule), under `{workdir}/more`.
    """
    d = config.demo
    for field, zero in (("sft_steps", ""), ("sft_more_steps", " (or be 0: no second round)")):
        if d[field] and d[field] <= d.sft_warmup_steps:  # Each round warms up again.
            raise ValueError(f"demo.{field}={d[field]} must exceed demo.sft_warmup_steps="
                             f"{d.sft_warmup_steps}{zero}")
    c = override(config, mode="sft", tokenizer_dir=paths["tokenizer"], total_steps=d.sft_steps,
                 **{"data.train_files": (paths["sft"],), "data.response": "response",
                    "optim.learning_rate": d.sft_learning_rate, "optim.schedule": "cosine",
                    "optim.warmup_steps": d.sft_warmup_steps, "eval.files": ()})
    _finished(sft.train(c, workdir), c, "warm start")
    if d.sft_more_steps:
        c = override(c, model_dir=os.path.join(workdir, "checkpoints"), seed=config.seed + 1,
                     total_steps=d.sft_more_steps,
                     **{"optim.learning_rate": d.sft_more_learning_rate})
        _finished(sft.train(c, os.path.join(workdir, "more")), c, "second warm start")
    return warm_start_dir(config, workdir)


def warm_start_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Where `warm_start` leaves its final checkpoint."""
    last = os.path.join(workdir, "more") if config.demo.sft_more_steps else workdir
    return os.path.join(last, "checkpoints")


def measure(config: ml_collections.ConfigDict, model_dir: str, paths: dict[str, str],
            workdir: str, name: str = "eval", changes: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    """Held-out accuracy, tokens and steps with plain sampling, overall and by difficulty.

    `changes` are dotted eval overrides (`{"eval.max_new_tokens": 64}`,
    `{"eval.exit_after_first_step": True}`); the results go to `{workdir}/{name}.json`. Each
    difficulty also gets `first_correct` (share of first attempts that state the right sum),
    `fixed` (share of wrong first attempts whose final answer is right; None without any) and
    `steps_after_right` (mean steps after a right first attempt: redundant ones).
    """
    c = override(config, mode="eval", model_dir=model_dir, tokenizer_dir=paths["tokenizer"],
                 **{"eval.files": (paths["eval"],),
                    "eval.out": os.path.join(workdir, f"{name}.json"), **(changes or {})})
    result = evaluate.run(c, workdir)["benchmarks"]["eval"]
    problems = {f"{paths['eval']}:{i + 1}": p for i, p in enumerate(_read_jsonl(paths["eval"]))}
    by: dict[int, list[tuple[dict, bool]]] = {}
    for r in result["records"]:
        p = problems[r["source"]]
        first_right = str(testbed.first_answer(r["text"])) == p["answer"]
        by.setdefault(p["difficulty"], []).append((r, first_right))
    result["by_difficulty"] = {str(d): _difficulty_stats(rs) for d, rs in sorted(by.items())}
    return result


def _difficulty_stats(rows: list[tuple[dict, bool]]) -> dict[str, Any]:
    def mean(xs):
        return sum(xs) / len(xs) if xs else None

    wrong_first = [r for r, first_right in rows if not first_right]
    right_first = [r for r, first_right in rows if first_right]
    return {"accuracy": mean([r["correct"] for r, _ in rows]),
            "response_tokens_mean": mean([r["tokens"] for r, _ in rows]),
            "steps_mean": mean([r["steps"] for r, _ in rows]), "count": len(rows),
            "first_correct": len(right_first) / len(rows),
            "fixed": mean([r["correct"] for r in wrong_first]),
            "steps_after_right": mean([r["steps"] - 1 for r in right_first])}


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def reinforce(config: ml_collections.ConfigDict, start_dir: str, paths: dict[str, str],
              workdir: str) -> str:
    """GRPO training (the variant of `config.reward.kind` / `config.dtr`) from `start_dir`."""
    c = override(config, mode="grpo", model_dir=start_dir, tokenizer_dir=paths["tokenizer"],
              **{"data.train_files": (paths["train"],), "eval.files": ()})
    _finished(trainer.train(c, workdir), c, "GRPO")
    return os.path.join(workdir, "checkpoints")


def _finished(result: dict[str, Any], config: ml_collections.ConfigDict, stage: str) -> None:
    """Stops the process when a stage was preempted (saved before `total_steps`), so that no
    later stage measures or caches a partial model; the same command resumes it."""
    if result["step"] < config.total_steps:
        raise SystemExit(f"{stage} preempted at step {result['step']} of {config.total_steps} "
                         "(saved); run the same command again to resume")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Warm start, measure, Step-GRPO, measure; writes `summary.json` and `summary.png`, and
    prints the summary."""
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
        plot_summary(summary, os.path.join(workdir, "summary.png"))
        print(format_summary(summary))
        print(f"summary in {workdir}/summary.json, plot in {workdir}/summary.png")
    return summary


_ROWS = (("accuracy", "accuracy", "{:.1%}"), ("response_tokens_mean", "response tokens", "{:.1f}"),
         ("steps_mean", "reasoning steps", "{:.2f}"))


def format_summary(summary: dict[str, Any]) -> str:
    """Before/after table: overall, then by difficulty."""
    rows = [f"{'':<26}{'warm start':>12}{'Step-GRPO':>12}{'change':>10}"]

    def add(label: str, b: dict[str, float], a: dict[str, float]) -> None:
        for key, name, fmt in _ROWS:
            if key == "accuracy":  # In points: a relative change of a rate reads wrongly.
                change = f"{100 * (a[key] - b[key]):+.1f} pt"
            else:
                change = f"{a[key] / b[key] - 1:+.1%}" if b[key] else "-"
            rows.append(f"{label + name:<26}{fmt.format(b[key]):>12}{fmt.format(a[key]):>12}"
                        f"{change:>10}")

    add("", summary["before"], summary["after"])
    by = summary["by_difficulty"]
    for d in by["before"]:
        add(f"d={d} ", by["before"][d], by["after"][d])
    return "\n".join(rows)


def plot_summary(summary: dict[str, Any], path: str) -> None:
    """Accuracy, tokens and steps by difficulty, before and after, as a small PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = summary["by_difficulty"]
    diffs = list(by["before"])
    fig, axes = plt.subplots(1, 3, figsize=(10, 3))
    for ax, (key, name, _) in zip(axes, _ROWS, strict=True):
        scale = 100 if key == "accuracy" else 1
        for i, (when, label) in enumerate((("before", "warm start"), ("after", "Step-GRPO"))):
            ax.bar([j + 0.4 * i for j in range(len(diffs))],
                   [scale * by[when][d][key] for d in diffs], 0.4, label=label)
        ax.set_xticks([j + 0.2 for j in range(len(diffs))], [f"d={d}" for d in diffs])
        ax.set_title(name + (" %" if scale == 100 else ""))
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)

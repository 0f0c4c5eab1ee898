"""Step-GRPO vs plain GRPO vs GRPO + length penalty on the overthinking testbed.

From one shared warm start and with the same rollout budget, trains each method for every
seed, evaluates on the held-out split with plain sampling, and writes `results.json`, a plot
and the markdown table for docs/overthinking.md.

  python tools/overthinking_bench.py --out /tmp/bench --seeds 0,1,2 [--config configs/demo.py]
"""

import json
import os
import sys
from statistics import fmean

from absl import app, flags
from ml_collections import config_flags

# Config files import `configs.*`, which lives at the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stepgrpo_jax import demo, parallel  # noqa: E402

CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Testbed config.",
                                         lock_config=True)
OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds per method.")
METHODS = flags.DEFINE_list("methods", ["step_grpo", "grpo", "grpo_lp"], "Methods to compare.")
DOC = flags.DEFINE_string("doc", None, "Also put the markdown report into this page, between "
                          "its `<!-- bench:start -->` and `<!-- bench:end -->` lines.")

# Method -> (reward kind, DTR on): the paper's three arms, same trainer and budget.
ARMS = {"step_grpo": ("step_grpo", True), "grpo": ("grpo", False), "grpo_lp": ("grpo_lp", False)}
KEYS = ("accuracy", "response_tokens_mean", "steps_mean")


def summarize(runs: dict, base: dict) -> dict:
    """Per method: means over seeds, and ratios to the warm start."""
    out = {"sft": {k: base[k] for k in KEYS}}
    for method, by_seed in runs.items():
        m = {k: fmean([r[k] for r in by_seed.values()]) for k in KEYS}
        m["tokens_vs_sft"] = m["response_tokens_mean"] / base["response_tokens_mean"]
        m["accuracy_change"] = m["accuracy"] - base["accuracy"]
        out[method] = m
    return out


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    base = results["sft"]
    ax1.scatter(base["response_tokens_mean"], 100 * base["accuracy"], marker="*", s=200,
                c="k", label="warm start (SFT)")
    for i, (method, by_seed) in enumerate(results["runs"].items()):
        color = f"C{i}"
        xs = [r["response_tokens_mean"] for r in by_seed.values()]
        ys = [100 * r["accuracy"] for r in by_seed.values()]
        ax1.scatter(xs, ys, c=color, alpha=0.4)
        ax1.scatter(fmean(xs), fmean(ys), c=color, s=120, label=method, edgecolors="k")
    ax1.set_xlabel("mean response tokens (held-out)")
    ax1.set_ylabel("accuracy %")
    ax1.legend()
    ax1.set_title("accuracy vs length")

    difficulties = sorted(base["by_difficulty"])
    arms = {"sft": [base]} | {m: list(s.values()) for m, s in results["runs"].items()}
    width = 0.8 / len(arms)
    for i, (name, runs) in enumerate(arms.items()):
        steps = [fmean([r["by_difficulty"][d]["steps_mean"] for r in runs])
                 for d in difficulties]
        ax2.bar([j + i * width for j in range(len(difficulties))], steps, width, label=name,
                color="k" if name == "sft" else f"C{i - 1}")
    ax2.set_xticks([j + 0.4 - width / 2 for j in range(len(difficulties))],
                   [f"difficulty {d}" for d in difficulties])
    ax2.set_ylabel("reasoning steps kept")
    ax2.set_title("steps by difficulty")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(results: dict, command: str) -> str:
    s = results["summary"]
    lines = ["| method | accuracy | Δ accuracy | tokens | tokens vs SFT | steps |",
             "|---|---|---|---|---|---|",
             f"| warm start (SFT) | {s['sft']['accuracy']:.1%} | | "
             f"{s['sft']['response_tokens_mean']:.1f} | 100% | {s['sft']['steps_mean']:.2f} |"]
    for method in results["runs"]:
        m = s[method]
        lines.append(f"| {method} | {m['accuracy']:.1%} | {100 * m['accuracy_change']:+.1f} pt | "
                     f"{m['response_tokens_mean']:.1f} | {m['tokens_vs_sft']:.1%} | "
                     f"{m['steps_mean']:.2f} |")
    diffs = sorted(results["sft"]["by_difficulty"])
    lines += ["", "Steps kept by difficulty (mean over seeds):", "",
              "| method | " + " | ".join(f"d={d}" for d in diffs) + " |",
              "|---|" + "---|" * len(diffs)]
    arms = {"warm start (SFT)": [results["sft"]]} | {
        m: list(r.values()) for m, r in results["runs"].items()}
    for name, runs in arms.items():
        cells = [f"{fmean([r['by_difficulty'][d]['steps_mean'] for r in runs]):.2f}"
                 for d in diffs]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Per seed (accuracy by difficulty last):", "",
              "| method | seed | accuracy | tokens | steps | "
              + " | ".join(f"d={d}" for d in diffs) + " |", "|" + "---|" * (5 + len(diffs))]
    seeds = {"warm start (SFT)": {"": results["sft"]}} | results["runs"]
    for name, by_seed in seeds.items():
        for seed, r in by_seed.items():
            cells = [f"{r['by_difficulty'][d]['accuracy']:.0%}" for d in diffs]
            lines.append(f"| {name} | {seed} | {r['accuracy']:.1%} | "
                         f"{r['response_tokens_mean']:.1f} | {r['steps_mean']:.2f} | "
                         + " | ".join(cells) + " |")
    return f"Command: `{command}`\n\n" + "\n".join(lines) + "\n"


def main(argv):
    del argv
    with parallel.logical_rules(CONFIG.value.mesh.rules):
        run(CONFIG.value, OUT.value)


def run(config, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    paths = demo.prepare_data(config, out)
    sft_dir = demo.warm_start(config, paths, os.path.join(out, "sft"))
    base = demo.measure(config, sft_dir, paths, os.path.join(out, "sft"))
    runs = {}
    for method in METHODS.value:
        kind, dtr = ARMS[method]
        for seed in map(int, SEEDS.value):
            workdir = os.path.join(out, f"{method}_seed{seed}")
            c = demo.override(config, seed=seed, **{"reward.kind": kind, "dtr.enabled": dtr})
            result = demo.measure(c, demo.reinforce(c, sft_dir, paths, workdir), paths, workdir)
            runs.setdefault(method, {})[seed] = {k: result[k] for k in (*KEYS, "by_difficulty")}
    results = {"sft": {k: base[k] for k in (*KEYS, "by_difficulty")}, "runs": runs}
    results["summary"] = summarize(runs, base)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    plot(results, os.path.join(out, "overthinking.png"))
    report = markdown(results, "python " + " ".join(sys.argv))
    print(report)
    if DOC.value:
        write_into(DOC.value, report)


def write_into(path: str, report: str, start: str = "<!-- bench:start -->",
               end: str = "<!-- bench:end -->") -> None:
    """Replaces what lies between the `start` and `end` lines of the page with `report`."""
    with open(path, encoding="utf-8") as f:
        page = f.read()
    if start not in page or end not in page:
        raise ValueError(f"{path}: needs a '{start}' line and an '{end}' line after it")
    head, rest = page.split(start, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{head}{start}\n{report}{end}{tail}")


if __name__ == "__main__":
    app.run(main)

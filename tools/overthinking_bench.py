"""Step-GRPO against its baselines and ablations on the overthinking testbed.

From one shared warm start and with the same rollout budget, trains each arm for every seed,
evaluates on the held-out split with plain sampling (also at shorter response budgets), and
writes `results.json`, `overthinking.png` and the markdown report for docs/overthinking.md.
The warm start is also evaluated with thinking closed after its first attempt, which measures
what its later steps are worth (the testbed's targets).

  python tools/overthinking_bench.py --out /tmp/bench --seeds 0,1,2 [--arms step_grpo,grpo]

A run whose `result.json` exists under --out is read back rather than trained again, so a
benchmark can be extended arm by arm or seed by seed.
"""

import json
import math
import os
import statistics
import sys

from absl import app, flags
from ml_collections import config_flags

# Config files import `configs.*`, which lives at the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stepgrpo_jax import demo, logs, parallel  # noqa: E402

CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Testbed config.",
                                         lock_config=True)
OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds per arm.")
ARMS_FLAG = flags.DEFINE_list("arms", None, "Arms to run (default: all of ARMS).")
BUDGETS = flags.DEFINE_list("budgets", ["48", "64", "96"],
                            "Shorter eval.max_new_tokens for the accuracy-against-budget curve "
                            "(the config's eval.max_new_tokens is always measured).")
DOC = flags.DEFINE_string("doc", None, "Also put the markdown report into this page, between "
                          "its `<!-- bench:start -->` and `<!-- bench:end -->` lines.")

# Arm -> config changes: the paper's methods and ablations, same trainer and rollout budget.
ARMS = {
    "step_grpo": {"reward.kind": "step_grpo", "dtr.enabled": True},
    "grpo": {"reward.kind": "grpo", "dtr.enabled": False},
    "grpo_lp": {"reward.kind": "grpo_lp", "dtr.enabled": False},  # Kimi length penalty.
    "step_grpo_no_dtr": {"reward.kind": "step_grpo", "dtr.enabled": False},
    "dtr_only": {"reward.kind": "no_step", "dtr.enabled": True},  # No step reward.
    "step_grpo_all_mu": {"reward.kind": "step_grpo_all_mu", "dtr.enabled": True},
    # SPEC §3's default: probe at up to 10 step boundaries (the testbed's config probes one).
    "step_grpo_probes10": {"reward.kind": "step_grpo", "dtr.enabled": True,
                           "dtr.max_probes": 10},
}
KEYS = ("accuracy", "response_tokens_mean", "steps_mean")
SFT = "warm start (SFT)"


def spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for a single value: no spread is known)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def summarize(runs: dict, base: dict) -> dict:
    """Per arm: mean and spread over seeds, overall and by difficulty, and ratios to the warm
    start."""
    out = {}
    for arm, by_seed in runs.items():
        rs = list(by_seed.values())
        m = {k: spread([r[k] for r in rs]) for k in KEYS}
        m["tokens_vs_sft"] = m["response_tokens_mean"][0] / base["response_tokens_mean"]
        m["accuracy_change"] = m["accuracy"][0] - base["accuracy"]
        m["by_difficulty"] = {d: {k: spread([r["by_difficulty"][d][k] for r in rs])
                                  for k in KEYS} for d in base["by_difficulty"]}
        m["budgets"] = {b: spread([r["budgets"][b] for r in rs]) for b in base["budgets"]}
        m["seeds"] = len(rs)
        out[arm] = m
    return out


def targets(base: dict, first_step: dict) -> dict:
    """The testbed's targets on the warm start, by difficulty: wrong first attempts fixed,
    the accuracy that closing thinking after the first attempt costs, redundant steps."""
    return {d: {"first_correct": s["first_correct"], "fixed": s["fixed"],
                "forcing_cost": s["accuracy"] - first_step["by_difficulty"][d]["accuracy"],
                "steps_after_right": s["steps_after_right"]}
            for d, s in base["by_difficulty"].items()}


def _pm(mean_sd: tuple[float, float], fmt: str, scale: float = 1.0) -> str:
    mean, sd = mean_sd
    if math.isnan(sd):  # One seed.
        return fmt.format(scale * mean)
    return f"{fmt.format(scale * mean)} ± {fmt.format(scale * sd)}"


def markdown(results: dict, command: str) -> str:
    base, s = results["sft"], results["summary"]
    diffs = sorted(base["by_difficulty"])
    budgets = sorted(base["budgets"], key=int)
    lines = [f"Command: `{command}`", "", "Warm start, by difficulty (targets: fixed >= 60%, "
             "forcing cost >= 15 pt at the hardest and <= 3 pt at the easiest, >= 1.5 steps "
             "after a right first attempt):", "",
             "| difficulty | accuracy | first attempt right | wrong first attempts fixed | "
             "cost of closing thinking after it | steps after a right first attempt |",
             "|---|---|---|---|---|---|"]
    for d, t in results["targets"].items():  # None where no first attempt was wrong (right).
        fixed = "-" if t["fixed"] is None else f"{t['fixed']:.0%}"
        after = "-" if t["steps_after_right"] is None else f"{t['steps_after_right']:.2f}"
        lines.append(f"| d={d} | {base['by_difficulty'][d]['accuracy']:.1%} | "
                     f"{t['first_correct']:.0%} | {fixed} | {100 * t['forcing_cost']:+.1f} pt | "
                     f"{after} |")
    lines += ["", "Mean ± standard deviation over seeds:", "",
              "| arm | seeds | accuracy | Δ accuracy | tokens | tokens vs SFT | steps |",
              "|---|---|---|---|---|---|---|",
              f"| {SFT} | | {base['accuracy']:.1%} | | {base['response_tokens_mean']:.1f} | "
              f"100% | {base['steps_mean']:.2f} |"]
    for arm, m in s.items():
        lines.append(f"| {arm} | {m['seeds']} | {_pm(m['accuracy'], '{:.1f}', 100)}% | "
                     f"{100 * m['accuracy_change']:+.1f} pt | "
                     f"{_pm(m['response_tokens_mean'], '{:.1f}')} | {m['tokens_vs_sft']:.1%} | "
                     f"{_pm(m['steps_mean'], '{:.2f}')} |")
    for key, title, fmt, scale in (("accuracy", "Accuracy (%)", "{:.1f}", 100),
                                   ("steps_mean", "Steps", "{:.2f}", 1)):
        lines += ["", f"{title} by difficulty:", "",
                  "| arm | " + " | ".join(f"d={d}" for d in diffs) + " |",
                  "|---|" + "---|" * len(diffs),
                  f"| {SFT} | " + " | ".join(fmt.format(scale * base["by_difficulty"][d][key])
                                             for d in diffs) + " |"]
        lines += [f"| {arm} | " + " | ".join(_pm(m["by_difficulty"][d][key], fmt, scale)
                                              for d in diffs) + " |" for arm, m in s.items()]
    lines += ["", "Accuracy (%) against the response budget (eval.max_new_tokens):", "",
              "| arm | " + " | ".join(budgets) + " |", "|---|" + "---|" * len(budgets),
              f"| {SFT} | " + " | ".join(f"{100 * base['budgets'][b]:.1f}" for b in budgets)
              + " |"]
    lines += [f"| {arm} | " + " | ".join(_pm(m["budgets"][b], "{:.1f}", 100) for b in budgets)
              + " |" for arm, m in s.items()]
    lines += ["", "Per seed (accuracy by difficulty last):", "",
              "| arm | seed | accuracy | tokens | steps | "
              + " | ".join(f"d={d}" for d in diffs) + " |", "|" + "---|" * (5 + len(diffs))]
    for arm, by_seed in results["runs"].items():
        for seed, r in by_seed.items():
            cells = [f"{r['by_difficulty'][d]['accuracy']:.0%}" for d in diffs]
            lines.append(f"| {arm} | {seed} | {r['accuracy']:.1%} | "
                         f"{r['response_tokens_mean']:.1f} | {r['steps_mean']:.2f} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: str) -> None:
    """Accuracy against tokens per arm, steps by difficulty, accuracy against budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base, s = results["sft"], results["summary"]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.2))
    ax1.scatter(base["response_tokens_mean"], 100 * base["accuracy"], marker="*", s=200,
                c="k", label=SFT)
    for i, (arm, by_seed) in enumerate(results["runs"].items()):
        xs = [r["response_tokens_mean"] for r in by_seed.values()]
        ys = [100 * r["accuracy"] for r in by_seed.values()]
        ax1.scatter(xs, ys, c=f"C{i}", alpha=0.4)
        ax1.scatter(statistics.fmean(xs), statistics.fmean(ys), c=f"C{i}", s=120, label=arm,
                    edgecolors="k")
    ax1.set(xlabel="mean response tokens (held-out)", ylabel="accuracy %",
            title="accuracy against length")
    ax1.legend(fontsize=7)

    diffs = sorted(base["by_difficulty"])
    width = 0.8 / (1 + len(s))
    arms = [(SFT, {d: (base["by_difficulty"][d]["steps_mean"], 0.0) for d in diffs}, "k")]
    arms += [(arm, {d: m["by_difficulty"][d]["steps_mean"] for d in diffs}, f"C{i}")
             for i, (arm, m) in enumerate(s.items())]
    for i, (name, steps, color) in enumerate(arms):
        ax2.bar([j + i * width for j in range(len(diffs))], [steps[d][0] for d in diffs], width,
                yerr=[steps[d][1] for d in diffs], label=name, color=color)
    ax2.set_xticks([j + 0.4 - width / 2 for j in range(len(diffs))],
                   [f"difficulty {d}" for d in diffs])
    ax2.set(ylabel="reasoning steps kept", title="steps by difficulty")

    budgets = sorted(base["budgets"], key=int)
    xs = [int(b) for b in budgets]
    ax3.plot(xs, [100 * base["budgets"][b] for b in budgets], "k*-", label=SFT)
    for i, (arm, m) in enumerate(s.items()):
        ax3.errorbar(xs, [100 * m["budgets"][b][0] for b in budgets],
                     yerr=[100 * m["budgets"][b][1] for b in budgets], color=f"C{i}",
                     marker="o", label=arm)
    ax3.set(xlabel="response budget (max_new_tokens)", ylabel="accuracy %", xscale="log",
            title="accuracy against budget")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def evaluate_all(config, model_dir: str, paths: dict, workdir: str, budgets: list[int],
                 stored: dict | None = None) -> dict:
    """The main evaluation (overall, by difficulty) and the accuracy at each shorter budget.

    With `stored` (an earlier result of the same model), only the budgets it lacks are
    measured and added to it."""
    if stored is None:
        main = demo.measure(config, model_dir, paths, workdir)
        stored = {k: main[k] for k in (*KEYS, "by_difficulty")}
        stored["budgets"] = {str(config.eval.max_new_tokens): main["accuracy"]}
    result = {**stored, "budgets": dict(stored["budgets"])}
    for b in budgets:
        if str(b) not in result["budgets"]:
            r = demo.measure(config, model_dir, paths, workdir, f"eval_{b}",
                             {"eval.max_new_tokens": b})
            result["budgets"][str(b)] = r["accuracy"]
    return result


def _at_budgets(result: dict, budgets: list[str]) -> dict:
    """`result` with the accuracy at `budgets` only (a stored run may hold more)."""
    return {**result, "budgets": {b: result["budgets"][b] for b in budgets}}


def _cached(path: str, compute) -> dict:
    """`compute(stored)`, where `stored` is the result stored at `path` (None if there is
    none), and stores what it returns if that differs: a stored result is read back and only
    completed (the budgets it lacks)."""
    stored = None
    if os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)
    result = compute(stored)
    if result != stored:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
    return result


def run(config, out: str, arms: list[str], seeds: list[int], budgets: list[int]) -> dict:
    os.makedirs(out, exist_ok=True)
    paths = demo.prepare_data(config, out)
    sft_workdir = os.path.join(out, "sft")
    sft_dir = demo.warm_start_dir(config, sft_workdir)
    if not os.path.exists(os.path.join(sft_workdir, "done")):
        demo.warm_start(config, paths, sft_workdir)
        open(os.path.join(sft_workdir, "done"), "w").close()
    shown = [str(b) for b in (config.eval.max_new_tokens, *budgets)]
    base = _cached(os.path.join(sft_workdir, "result.json"), lambda stored: evaluate_all(
        config, sft_dir, paths, sft_workdir, budgets, stored))
    first_step = _cached(os.path.join(sft_workdir, "first_step.json"), lambda stored: stored or {
        k: v for k, v in demo.measure(config, sft_dir, paths, sft_workdir, "eval_first_step",
                                      {"eval.exit_after_first_step": True}).items()
        if k != "records"})
    runs = {}
    for arm in arms:
        for seed in seeds:
            workdir = os.path.join(out, f"{arm}_seed{seed}")
            c = demo.override(config, seed=seed, **ARMS[arm])

            def train_and_measure(stored, c=c, workdir=workdir):
                # A stored run is not trained again, only evaluated at the budgets it lacks.
                model_dir = (demo.reinforce(c, sft_dir, paths, workdir) if stored is None
                             else os.path.join(workdir, "checkpoints"))
                return evaluate_all(c, model_dir, paths, workdir, budgets, stored)

            stored = _cached(os.path.join(workdir, "result.json"), train_and_measure)
            runs.setdefault(arm, {})[seed] = _at_budgets(stored, shown)
    base = _at_budgets(base, shown)
    results = {"sft": base, "targets": targets(base, first_step), "runs": runs,
               "summary": summarize(runs, base)}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    plot(results, os.path.join(out, "overthinking.png"))
    return results


def main(argv):
    del argv
    logs.quiet_logs()
    arms = ARMS_FLAG.value or list(ARMS)
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise app.UsageError(f"--arms: unknown {sorted(unknown)}; expected some of {list(ARMS)}")
    with parallel.logical_rules(CONFIG.value.mesh.rules):
        results = run(CONFIG.value, OUT.value, arms, [int(s) for s in SEEDS.value],
                      [int(b) for b in BUDGETS.value])
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

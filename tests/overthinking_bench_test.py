"""The benchmark: summary over seeds, testbed targets, report, plots, and a tiny run end to end."""

import json
import math
import os
import subprocess
import sys

import fixtures
import pytest
from demo_test import SHRINK

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    return fixtures.load_tool("overthinking_bench")


def _run(acc, tokens, steps, short=0.1):
    return {"accuracy": acc, "response_tokens_mean": tokens, "steps_mean": steps,
            "by_difficulty": {
                "1": {"steps_mean": steps - 0.5, "accuracy": acc + 0.1,
                      "response_tokens_mean": tokens, "first_correct": 0.9, "fixed": 0.75,
                      "steps_after_right": 2.0},
                "2": {"steps_mean": steps + 0.5, "accuracy": acc - 0.1,
                      "response_tokens_mean": tokens, "first_correct": 1.0, "fixed": None,
                      "steps_after_right": 1.5},
                "3": {"steps_mean": 1.0, "accuracy": 0.0, "response_tokens_mean": tokens,
                      "first_correct": 0.0, "fixed": 0.0, "steps_after_right": None}},
            "budgets": {"32": short, "256": acc}}


def _results(bench):
    base = _run(0.6, 80.0, 3.6)
    runs = {"step_grpo": {0: _run(0.58, 60.0, 2.0, 0.2), 1: _run(0.62, 64.0, 2.4, 0.4)},
            "grpo": {0: _run(0.64, 82.0, 3.6)}}
    first_step = _run(0.5, 20.0, 1.0)
    first_step["by_difficulty"]["1"]["accuracy"] = 0.68  # 2 points below the warm start's.
    return {"sft": base, "targets": bench.targets(base, first_step), "runs": runs,
            "summary": bench.summarize(runs, base)}


def test_summary_targets_and_markdown(bench):
    results = _results(bench)
    s = results["summary"]["step_grpo"]
    assert s["response_tokens_mean"] == pytest.approx((62.0, 2.8284271))  # Mean, sample sd.
    assert s["tokens_vs_sft"] == pytest.approx(62.0 / 80.0)
    assert s["accuracy_change"] == pytest.approx(0.0)
    assert s["by_difficulty"]["2"]["steps_mean"] == pytest.approx((2.7, 0.2828427))
    assert s["budgets"]["32"] == pytest.approx((0.3, 0.1414214))
    mean, sd = results["summary"]["grpo"]["accuracy"]
    assert mean == 0.64 and math.isnan(sd)  # One seed: no spread is known.
    t = results["targets"]
    assert t["1"]["forcing_cost"] == pytest.approx(0.02) and t["1"]["fixed"] == 0.75
    assert t["2"]["forcing_cost"] == pytest.approx(0.1) and t["2"]["fixed"] is None
    report = bench.markdown(results, "python x")
    assert "| d=1 | 70.0% | 90% | 75% | +2.0 pt | 2.00 |" in report
    assert "| d=2 | 50.0% | 100% | - | +10.0 pt | 1.50 |" in report
    assert "| d=3 | 0.0% | 0% | 0% | +0.0 pt | - |" in report
    assert "| step_grpo | 2 | 60.0 ± 2.8% | +0.0 pt | 62.0 ± 2.8 | 77.5% | 2.20 ± 0.28 |" \
        in report
    assert "| grpo | 1 | 64.0% | +4.0 pt | 82.0 | 102.5% | 3.60 |" in report  # No "± 0.0".
    assert "| step_grpo | 1.70 ± 0.28 | 2.70 ± 0.28 | 1.00 ± 0.00 |" in report  # Steps.
    assert "| step_grpo | 30.0 ± 14.1 | 60.0 ± 2.8 |" in report  # Accuracy against budget.
    assert "| step_grpo | 1 | 62.0% | 64.0 | 2.40 | 72% | 52% | 0% |" in report  # Per seed.


def test_plot_writes_a_png(bench, tmp_path):
    path = tmp_path / "plot.png"
    bench.plot(_results(bench), str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_goes_between_the_markers(bench, tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\nprose\n<!-- bench:start -->\nold table\n<!-- bench:end -->\nmore\n")
    bench.write_into(str(page), "new table\n")
    assert page.read_text() == ("# Title\nprose\n<!-- bench:start -->\nnew table\n"
                                "<!-- bench:end -->\nmore\n")
    page.write_text("no markers\n")
    with pytest.raises(ValueError, match="bench:start"):
        bench.write_into(str(page), "x")


@pytest.mark.slow
def test_tiny_benchmark_end_to_end(tmp_path):
    """One arm, one seed, one short budget on the shrunk demo; a second call reads the runs
    back instead of training again, and a third with another budget only evaluates it.
    (Several arms are summarized above from fixed results; each arm is the same demo stage
    with other overrides.)"""
    cmd = [sys.executable, "tools/overthinking_bench.py", f"--out={tmp_path}", "--seeds=0",
           "--arms=grpo_lp", "--budgets=16",
           *[f"--config.{k}={v}" for k, v in SHRINK.items()]]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    assert set(results["runs"]) == {"grpo_lp"}
    assert set(results["sft"]["budgets"]) == {"16", "32"}
    assert set(results["targets"]) == {"1", "2", "3"}
    assert "| d=3 |" in out.stdout  # The targets table, whatever the tiny model got right.
    assert (tmp_path / "overthinking.png").exists() and "| grpo_lp | 1 |" in out.stdout
    mtime = os.path.getmtime(tmp_path / "grpo_lp_seed0" / "result.json")
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert os.path.getmtime(tmp_path / "grpo_lp_seed0" / "result.json") == mtime
    assert again.stdout.startswith("Command:")  # Nothing trained or evaluated again,
    assert out.stdout.endswith(again.stdout)  # and the same report.
    # Another budget: only its evaluations run (nothing trains), and the stored results keep
    # the budgets measured before while the report shows the ones asked for.
    metrics_mtime = os.path.getmtime(tmp_path / "grpo_lp_seed0" / "metrics.jsonl")
    cmd[cmd.index("--budgets=16")] = "--budgets=8"
    third = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert third.returncode == 0, third.stderr[-3000:]
    assert os.path.getmtime(tmp_path / "grpo_lp_seed0" / "metrics.jsonl") == metrics_mtime
    for workdir in ("sft", "grpo_lp_seed0"):
        with open(tmp_path / workdir / "result.json") as f:
            assert set(json.load(f)["budgets"]) == {"8", "16", "32"}
        assert (tmp_path / workdir / "eval_8.json").exists()
    with open(tmp_path / "results.json") as f:
        assert set(json.load(f)["sft"]["budgets"]) == {"8", "32"}
    assert "| arm | 8 | 32 |" in third.stdout

"""The benchmark's report: summary over seeds, markdown table, and its place in the doc page."""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "overthinking_bench", os.path.join(ROOT, "tools", "overthinking_bench.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(acc, tokens, steps):
    return {"accuracy": acc, "response_tokens_mean": tokens, "steps_mean": steps,
            "by_difficulty": {"1": {"steps_mean": steps - 0.5, "accuracy": acc + 0.1},
                              "2": {"steps_mean": steps + 0.5, "accuracy": acc - 0.1}}}


def test_summary_and_markdown(bench):
    base = _run(0.6, 80.0, 3.6)
    runs = {"step_grpo": {0: _run(0.58, 60.0, 2.0), 1: _run(0.62, 64.0, 2.4)},
            "grpo": {0: _run(0.64, 82.0, 3.6)}}
    summary = bench.summarize(runs, base)
    assert summary["step_grpo"]["response_tokens_mean"] == pytest.approx(62.0)
    assert summary["step_grpo"]["tokens_vs_sft"] == pytest.approx(62.0 / 80.0)
    assert summary["step_grpo"]["accuracy_change"] == pytest.approx(0.0)
    assert summary["grpo"]["accuracy_change"] == pytest.approx(0.04)
    report = bench.markdown({"sft": base, "runs": runs, "summary": summary}, "python x")
    assert "| step_grpo | 60.0% | +0.0 pt | 62.0 | 77.5% | 2.20 |" in report
    assert "| step_grpo | 1.70 | 2.70 |" in report  # Steps by difficulty, mean over seeds.
    assert "| step_grpo | 1 | 62.0% | 64.0 | 2.40 | 72% | 52% |" in report  # Per seed.


def test_report_goes_between_the_markers(bench, tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\nprose\n<!-- bench:start -->\nold table\n<!-- bench:end -->\nmore\n")
    bench.write_into(str(page), "new table\n")
    assert page.read_text() == ("# Title\nprose\n<!-- bench:start -->\nnew table\n"
                                "<!-- bench:end -->\nmore\n")
    page.write_text("no markers\n")
    with pytest.raises(ValueError, match="bench:start"):
        bench.write_into(str(page), "x")

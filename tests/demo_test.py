"""The embedded default (`python main.py --config configs/demo.py`) end to end, shrunk."""

import json
import os
import subprocess
import sys

import fixtures
import pytest

SHRINK = {
    "demo.n_train": 16, "demo.n_eval": 12, "demo.n_sft": 48, "demo.sft_steps": 6,
    "demo.sft_more_steps": 3,
    "demo.sft_warmup_steps": 2, "total_steps": 2,
    "model.overrides.embed_dim": 32, "model.overrides.mlp_dim": 64,
    "model.overrides.num_layers": 2, "model.overrides.num_heads": 2,
    "model.overrides.num_kv_heads": 1, "model.overrides.head_dim": 16,
    "sampling.max_new_tokens": 32, "sampling.batch_size": 16, "grpo.prompts_per_step": 8,
    "grpo.group_size": 2, "grpo.num_minibatches": 2, "dtr.probe_budget": 6,
    "dtr.exit_margin": 2, "eval.max_new_tokens": 32, "eval.batch_size": 8,
    "ckpt.async_save": False, "reward.grader_workers": 1,
}


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    workdir = tmp_path / "demo"
    out = subprocess.run(
        [sys.executable, "main.py", "--config=configs/demo.py", f"--workdir={workdir}",
         *[f"--config.{k}={v}" for k, v in SHRINK.items()]],
        cwd=fixtures.ROOT, capture_output=True, text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-3000:]
    with open(workdir / "summary.json") as f:
        summary = json.load(f)
    for when in ("before", "after"):
        assert set(summary[when]) == {"accuracy", "response_tokens_mean", "steps_mean"}
        assert 0 <= summary[when]["accuracy"] <= 1
        assert summary[when]["response_tokens_mean"] > 0 and summary[when]["steps_mean"] >= 1
        assert set(summary["by_difficulty"][when]) == {"1", "2", "3"}
    assert "warm start" in out.stdout and "Step-GRPO" in out.stdout
    assert "d=3 accuracy" in out.stdout  # Before/after by difficulty.
    assert f"summary in {workdir}/summary.json, plot in {workdir}/summary.png" in out.stdout
    assert (workdir / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Both stages left their checkpoints and metrics.
    for stage in ("sft", "grpo"):
        assert (workdir / stage / "metrics.jsonl").exists()
        assert os.listdir(workdir / stage / "checkpoints")


def test_a_preempted_stage_stops_the_demo(monkeypatch, tmp_path):
    """A stage saved before its last step (preempted) must not be measured as if finished:
    the benchmark would cache the partial model's result."""
    from configs import demo as demo_config
    from stepgrpo_jax import demo, trainer

    config = demo_config.get_config()
    monkeypatch.setattr(trainer, "train", lambda c, w: {"step": c.total_steps - 1})
    paths = {"tokenizer": "t", "train": "x.jsonl"}
    with pytest.raises(SystemExit, match=f"GRPO preempted at step {config.total_steps - 1} of"):
        demo.reinforce(config, "ckpt", paths, str(tmp_path))
    monkeypatch.setattr(trainer, "train", lambda c, w: {"step": c.total_steps})
    assert demo.reinforce(config, "ckpt", paths, str(tmp_path)) == f"{tmp_path}/checkpoints"


@pytest.mark.parametrize("field", ["sft_steps", "sft_more_steps"])
def test_a_warm_start_round_shorter_than_its_warmup_is_refused(monkeypatch, field):
    """Each round warms its learning rate up again: one no longer than the warm-up is a
    config error named by its field, before any training."""
    from configs import demo as demo_config
    from stepgrpo_jax import demo, sft

    config = demo_config.get_config()
    monkeypatch.setattr(sft, "train", lambda c, w: pytest.fail("trained"))
    with config.unlocked():
        config.demo[field] = config.demo.sft_warmup_steps
    with pytest.raises(ValueError, match=f"demo.{field}=20 must exceed demo.sft_warmup_steps"):
        demo.warm_start(config, {"tokenizer": "t", "sft": "x.jsonl"}, "/nonexistent")

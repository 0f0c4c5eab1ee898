"""The training run end to end: resume after SIGKILL, metrics, export, multi-host, bad input."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import fixtures
import jax
import numpy as np
import pytest
import torch
from transformers import Qwen3ForCausalLM

from stepgrpo_jax import checkpoint, testbed

REQUIRED_METRICS = (
    "step", "reward_mean", "acc_mean", "fmt_mean", "response_tokens_mean", "steps_mean",
    "probes_mean", "exit_frac_natural", "exit_frac_early_exit", "exit_frac_budget",
    "exit_frac_eos", "exit_frac_length", "kl", "clip_frac", "entropy", "loss", "grad_norm", "lr",
    "frac_reward_zero_std", "rollout_seconds", "update_seconds", "tokens_per_second",
    "grader_timeouts", "rollout_occupancy", "rollout_decode_steps", "prefill_tokens")
TIMINGS = ("rollout_seconds", "update_seconds", "tokens_per_second")


@pytest.fixture(scope="module")
def testbed_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("testbed"))
    testbed.prepare(out, seed=0, n_train=64, n_eval=16, n_sft=64)
    return out


def _main(testbed_dir, workdir, *overrides, devices=1, mesh="1x-1x1", extra=(), check=True,
          timeout=600):
    cmd = [sys.executable, "main.py",
           f"--config=tests/tiny_run_config.py:testbed={testbed_dir},mesh={mesh}",
           f"--workdir={workdir}", *[f"--config.{o}" for o in overrides], *extra]
    result = subprocess.run(cmd, cwd=fixtures.ROOT, env=fixtures.cpu_env(devices),
                            capture_output=True, text=True,
                            timeout=timeout)
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _params(workdir, step=None):
    _, params = checkpoint.load_model(os.path.join(workdir, "checkpoints"), step=step)
    return params


def _without_timings(lines):
    return [{k: v for k, v in line.items() if k not in TIMINGS} for line in lines]


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise(testbed_dir, tmp_path):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    _main(testbed_dir, straight)

    cmd = [sys.executable, "main.py", f"--config=tests/tiny_run_config.py:testbed={testbed_dir}",
           f"--workdir={resumed}"]
    proc = subprocess.Popen(cmd, cwd=fixtures.ROOT, env=fixtures.cpu_env(),
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt_dir = os.path.join(resumed, "checkpoints")
    deadline = time.time() + 600
    while not (os.path.isdir(ckpt_dir) and checkpoint.Checkpoints(
            ckpt_dir, async_save=False).all_steps()):
        assert proc.poll() is None and time.time() < deadline, "run ended before step 2"
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 2 in checkpoint.Checkpoints(ckpt_dir, async_save=False).all_steps()
    _main(testbed_dir, resumed)

    a, b = _metrics(straight), _metrics(resumed)
    assert [m["step"] for m in a] == [1, 2, 3, 4] == [m["step"] for m in b]
    assert _without_timings(a) == _without_timings(b)
    for x, y in zip(jax.tree.leaves(_params(straight)), jax.tree.leaves(_params(resumed)),
                    strict=True):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
    for name in REQUIRED_METRICS:
        assert name in a[-1], name


@pytest.mark.slow
def test_sigterm_saves_and_stops(testbed_dir, tmp_path):
    workdir = str(tmp_path / "w")
    cmd = [sys.executable, "main.py", f"--config=tests/tiny_run_config.py:testbed={testbed_dir}",
           f"--workdir={workdir}", "--config.total_steps=50", "--config.ckpt.every_steps=100"]
    proc = subprocess.Popen(cmd, cwd=fixtures.ROOT, env=fixtures.cpu_env(),
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 600
    while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    steps = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints"),
                                   async_save=False).all_steps()
    assert len(steps) == 1 and 1 <= steps[0] < 50


@pytest.mark.slow
def test_a_quiet_run_then_export_of_its_last_checkpoint(testbed_dir, tmp_path):
    workdir, out = str(tmp_path / "w"), str(tmp_path / "hf")
    r = _main(testbed_dir, workdir, "total_steps=2")
    # The command speaks to a person: progress bars and where things are; no library logs
    # (absl INFO lines start "I<date>"), no download messages, no config dump.
    printed = r.stdout + r.stderr
    assert not re.search(r"^I\d{4} ", printed, re.MULTILINE), printed[-3000:]
    for noise in ("Downloading and preparing", "custom data configuration", "kl_estimator"):
        assert noise not in printed, noise
    assert f"checkpoints in {workdir}/checkpoints, metrics in {workdir}/metrics.jsonl" in r.stdout
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["grpo"]["group_size"] == 2
    lines = _metrics(workdir)
    assert len(lines) == 2 and all(np.isfinite(lines[-1][k]) for k in ("loss", "grad_norm"))
    subprocess.run([sys.executable, "tools/export_hf.py",
                    f"--checkpoint={workdir}/checkpoints", f"--out={out}",
                    f"--tokenizer_dir={testbed_dir}/tokenizer"], cwd=fixtures.ROOT,
                   env=fixtures.cpu_env(), check=True,
                   capture_output=True)
    hf = Qwen3ForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = torch.tensor([[1, 5, 7, 9]])
    from stepgrpo_jax import model

    cfg, params = checkpoint.load_model(os.path.join(workdir, "checkpoints"))
    ours = np.asarray(model.forward(cfg, params, ids.numpy()))
    with torch.no_grad():
        np.testing.assert_allclose(hf(ids).logits.numpy(), ours, atol=1e-4)


def _two_processes(testbed_dir, workdir, *overrides):
    return fixtures.start_processes(lambda i, port: [
        fixtures.PYTHON, "main.py", f"--config=tests/tiny_run_config.py:testbed={testbed_dir}",
        f"--workdir={workdir}", *[f"--config.{o}" for o in overrides],
        f"--coordinator=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"])


@pytest.mark.slow
def test_two_processes_train_and_resume_after_one_is_preempted(testbed_dir, tmp_path):
    """The tiny run in two local processes (jax.distributed, one CPU device each). A SIGTERM to
    one of them only: both save the same step and stop, and resuming gives the straight run
    bitwise."""
    straight, preempted = str(tmp_path / "straight"), str(tmp_path / "preempted")
    overrides = ("total_steps=6", "ckpt.every_steps=100")  # Saves: the last or preempted step.
    fixtures.finish(_two_processes(testbed_dir, straight, *overrides))
    assert [m["step"] for m in _metrics(straight)] == [1, 2, 3, 4, 5, 6]
    ckpt_dir = os.path.join(preempted, "checkpoints")

    procs = _two_processes(testbed_dir, preempted, *overrides)
    metrics = os.path.join(preempted, "metrics.jsonl")
    deadline = time.time() + 600
    while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
        assert all(p.poll() is None for p in procs) and time.time() < deadline
        time.sleep(0.5)
    procs[1].send_signal(signal.SIGTERM)
    logs = fixtures.finish(procs)
    steps = checkpoint.Checkpoints(ckpt_dir, async_save=False).all_steps()
    assert len(steps) == 1 and 1 <= steps[0] < 6, (steps, logs[1][-2000:])
    assert all(f"preempted: saving step {steps[0]}" in log for log in logs)

    fixtures.finish(_two_processes(testbed_dir, preempted, *overrides))
    a, b = _metrics(straight), _metrics(preempted)
    assert _without_timings(a) == _without_timings(b)
    for x, y in zip(jax.tree.leaves(_params(straight)), jax.tree.leaves(_params(preempted)),
                    strict=True):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


# ------------------------------------------------------------------------------ bad input


def test_missing_model_directory(testbed_dir, tmp_path):
    r = _main(testbed_dir, str(tmp_path / "w"), f"model_dir={tmp_path}/nope", check=False)
    assert r.returncode != 0 and f"{tmp_path}/nope: no such model directory" in r.stderr
    assert "kl_estimator" not in r.stderr  # The config is not dumped...
    r = _main(testbed_dir, str(tmp_path / "w"), f"model_dir={tmp_path}/nope", check=False,
              extra=["--log_level=info"])
    assert "kl_estimator" in r.stderr  # ...unless the logs are asked for.


def test_mistyped_override_says_did_you_mean(testbed_dir, tmp_path):
    r = _main(testbed_dir, str(tmp_path / "w"), "grpo.grup_size=4", check=False)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "no such config field 'grup_size'" in r.stderr
    assert 'Did you mean "group_size" instead of "grup_size"?' in r.stderr


def test_batch_that_does_not_divide_over_the_mesh(testbed_dir, tmp_path):
    # 3 prompts x 2 / 2 mini-batches = 3 rows per update, over a batch axis of 2 devices.
    r = _main(testbed_dir, str(tmp_path / "w"), "grpo.prompts_per_step=3", devices=2,
              mesh="1x2x1", check=False)
    assert r.returncode != 0 and "3 rows do not divide over the 2 batch shards" in r.stderr


def test_unwritable_workdir(testbed_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = _main(testbed_dir, str(blocker / "w"), check=False)
    assert r.returncode != 0 and f"workdir {blocker}/w is not writable" in r.stderr


def test_failed_save_leaves_no_partial_latest_checkpoint(tmp_path, monkeypatch):
    """A save that dies half-way (a full disk) must not become the step a restart resumes."""
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    ckpt = checkpoint.Checkpoints(str(tmp_path / "c"), async_save=False)
    params = {"w": jnp.ones((4,))}
    ckpt.save(1, params, {"step": 1})

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    # The JSON record is written after the params item has started: the step is half-written.
    handler = ocp.handlers.JsonCheckpointHandler
    monkeypatch.setattr(handler, "save", disk_full)
    monkeypatch.setattr(handler, "async_save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        ckpt.save(2, params, {"step": 2})
        ckpt.wait()
    monkeypatch.undo()
    reopened = checkpoint.Checkpoints(str(tmp_path / "c"), async_save=False)
    assert reopened.latest_step() == 1
    _, _, meta = reopened.restore(None, checkpoint.abstract(params))
    assert meta["step"] == 1


@pytest.mark.slow
def test_periodic_evaluation_is_logged(testbed_dir, tmp_path):
    """In this process: the 8 simulated devices of conftest form the mesh."""
    import tiny_run_config

    from stepgrpo_jax import trainer

    c = tiny_run_config.get_config(f"testbed={testbed_dir}")
    c.total_steps, c.eval.every_steps = 2, 1
    c.grpo.num_minibatches = 1  # 8 rows per update over the 8 simulated devices.
    c.eval.files = (f"{testbed_dir}/eval.jsonl",)
    workdir = str(tmp_path / "w")
    trainer.train(c, workdir)
    lines = _metrics(workdir)
    assert [m["step"] for m in lines] == [1, 2]
    for m in lines:
        assert 0 <= m["eval_accuracy"] <= 1 and m["eval_num_problems"] == 8
        assert m["eval_response_tokens_mean"] > 0


@pytest.mark.slow
def test_engine_and_static_sampler_train_alike(testbed_dir, tmp_path):
    """The same step with either rollout: equal completions, so equal rewards, losses and
    updates. The engine has 4 rows for 8 requests (each row is refilled) and prefills each
    group's prompt once."""
    import tiny_run_config

    from stepgrpo_jax import trainer

    lines = {}
    for engine in ("static", "continuous"):
        c = tiny_run_config.get_config(f"testbed={testbed_dir}")
        c.total_steps, c.sampling.engine, c.sampling.batch_size = 1, engine, 4
        c.mesh.shape = (1, 4, 2)  # 4 rows over 4 batch shards.
        workdir = str(tmp_path / engine)
        trainer.train(c, workdir)
        lines[engine] = _metrics(workdir)[0]
    rollout = ("rollout_occupancy", "rollout_decode_steps", "prefill_tokens")
    static, continuous = ({k: v for k, v in m.items() if k not in TIMINGS + rollout}
                          for m in (lines["static"], lines["continuous"]))
    assert continuous == pytest.approx(static, rel=1e-5)
    # A random model runs about every row to the budget: nothing for the engine to gain.
    assert lines["continuous"]["rollout_occupancy"] >= lines["static"]["rollout_occupancy"]
    assert lines["continuous"]["prefill_tokens"] * 2 == lines["static"]["prefill_tokens"]
    assert 0 < lines["continuous"]["rollout_occupancy"] <= 1


def test_update_batches_pad_responses_to_a_bucket():
    from stepgrpo_jax import trainer

    assert trainer.padded_length(70, 64, 256) == 128
    assert trainer.padded_length(64, 64, 256) == 64
    assert trainer.padded_length(250, 64, 256) == 256  # Never past the sampling budget.
    assert trainer.padded_length(0, 64, 256) == 64
    assert trainer.padded_length(70, 0, 256) == 256  # 0: always the budget.
    batch = trainer.build_batch(
        [[5, 6], [7]], [np.array([1, 2, 3]), np.array([4])], [np.ones(3), np.array([0.0])],
        np.array([0.5, -0.5]), prompt_len=3, response_len=trainer.padded_length(3, 4, 16),
        pad_id=0)
    np.testing.assert_array_equal(batch["input_ids"],
                                  [[0, 5, 6, 1, 2, 3, 0], [0, 0, 7, 4, 0, 0, 0]])
    np.testing.assert_array_equal(batch["attention_mask"], batch["input_ids"] > 0)
    np.testing.assert_array_equal(batch["loss_mask"], [[0, 0, 0, 1, 1, 1, 0], [0] * 7])

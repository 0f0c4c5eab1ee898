"""Sampler: greedy parity with transformers, log-probs, sampling filters, mesh, bucketing."""

import dataclasses
import json
import os
import shutil

import chex
import fixtures
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampling_fixtures import (
    DTR_CFG,
    DTR_PARAMS,
    DTR_TABLES,
    PLAIN,
    TABLES,
    TINY,
    random_prompts,
    teacher_forced_logprobs,
)

from stepgrpo_jax import model, parallel, sampling
from stepgrpo_jax.sampling import filters
from stepgrpo_jax.sampling import sampler as sampler_lib


def test_greedy_matches_transformers(tmp_path):
    import torch
    from tiny_models import save_tiny_hf_model

    from stepgrpo_jax import hf

    torch_model = save_tiny_hf_model(str(tmp_path), seed=3, vocab_size=128, hidden_size=32,
                                     eos_token_id=1)
    cfg, params = hf.load_pretrained(str(tmp_path))
    prompts = random_prompts(0, 4, lengths=(2, 14), low=3)
    scfg = dataclasses.replace(PLAIN, max_new_tokens=64)
    out = sampling.Sampler(cfg, scfg, TABLES)(params, prompts, jax.random.key(0))
    for row, prompt in enumerate(prompts):
        with torch.no_grad():
            ref = torch_model.generate(torch.tensor([prompt]), max_new_tokens=64, do_sample=False,
                                       eos_token_id=1, pad_token_id=0)
        assert out.completion(row) == ref[0, len(prompt):].tolist(), f"row {row}"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_logprobs_match_teacher_forcing(dtype):
    params = model.init_params(TINY, jax.random.key(1))
    prompts = random_prompts(1, 4)
    scfg = dataclasses.replace(PLAIN, max_new_tokens=24, temperature=0.8, top_k=20,
                               cache_dtype=dtype)
    out = sampling.Sampler(TINY, scfg, TABLES)(params, prompts, jax.random.key(2))
    tol = 1e-4 if dtype == "float32" else 3e-2  # A bf16 cache rounds keys and values.
    for row, prompt in enumerate(prompts):
        ref = teacher_forced_logprobs(TINY, params, prompt, out.completion(row))
        np.testing.assert_allclose(out.logprobs[row, :out.lengths[row]], ref, atol=tol)


def _filtered_probs(logits: np.ndarray, temperature: float, top_k: int, top_p: float):
    """The exact sampling distribution: temperature, then top-k, then top-p (HF's order)."""
    z = logits.astype(np.float64) / temperature
    order = np.argsort(-z, kind="stable")
    keep = np.zeros(z.size, bool)
    keep[order[:top_k or z.size]] = True
    p = np.where(keep, np.exp(z - z.max()), 0.0)
    p /= p.sum()
    mass_before = np.cumsum(p[order]) - p[order]
    keep[order[mass_before >= top_p]] = False
    p = np.where(keep, p, 0.0)
    return p / p.sum()


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 0, 1.0), (1.0, 0, 0.8),
                                                     (1.5, 10, 0.6)])
def test_sampling_distribution(temperature, top_k, top_p):
    from scipy import stats

    # 1000 tokens: past 2 blocks of 128, so the two-stage draw runs, with a padded last block.
    cfg = TINY.replace(vocab_size=1000)
    params = model.init_params(cfg, jax.random.key(3))
    params["lm_head"] = params["lm_head"] * 40  # A peaked distribution, so the filters bite.
    prompt = [5, 6, 7]
    n = 8192
    scfg = dataclasses.replace(PLAIN, max_new_tokens=1, temperature=temperature, top_k=top_k,
                               top_p=top_p)
    tables = sampling.TriggerTables.from_strings([""] * cfg.vocab_size, ("Wait",))
    out = sampling.Sampler(cfg, scfg, tables)(params, [prompt] * n, jax.random.key(4))
    counts = np.bincount(out.tokens[:, 0], minlength=cfg.vocab_size)
    logits = np.asarray(model.forward(cfg, params, jnp.asarray([prompt]))[0, -1])
    p = _filtered_probs(logits, temperature, top_k, top_p)
    assert counts[p == 0].sum() == 0, "sampled a filtered-out token"
    assert (p > 0).sum() >= 2
    big = n * p >= 5  # Chi-square wants 5 expected counts a bin: pool the rare tokens.
    observed = np.append(counts[big], counts[~big].sum())
    expected = np.append(n * p[big], n * p[~big].sum())
    keep = expected > 0
    chi2 = stats.chisquare(observed[keep], expected[keep])
    assert chi2.pvalue > 1e-4, (chi2, (p > 0).sum())


def test_greedy_takes_the_first_maximum():
    logits = jnp.array([[1.0, 3.0, 3.0, -jnp.inf], [0.0, 0.0, 0.0, 0.0], [-1.0, -2.0, 5.0, 4.0]])
    np.testing.assert_array_equal(filters.greedy(logits), [1, 0, 2])


def test_mesh_matches_single_device():
    prompts = random_prompts(5, 8)
    single = sampling.Sampler(TINY, DTR_CFG, DTR_TABLES)(DTR_PARAMS, prompts, jax.random.key(0))
    mesh = parallel.make_mesh((2, 2, 2))
    shardings = parallel.tree_shardings(mesh, model.param_axes(TINY), DTR_PARAMS)
    params = jax.device_put(DTR_PARAMS, shardings)
    sharded = sampling.Sampler(TINY, DTR_CFG, DTR_TABLES, mesh)(params, prompts,
                                                                jax.random.key(0))
    assert single.num_probes.sum() > 0  # The DTR detour runs sharded too.
    for field in ("tokens", "forced", "lengths", "step_counts", "num_probes", "exit_reasons",
                  "think_end"):
        np.testing.assert_array_equal(getattr(sharded, field), getattr(single, field), field)
    np.testing.assert_allclose(sharded.logprobs, single.logprobs, atol=1e-4)


def test_same_bucket_does_not_retrace(monkeypatch):
    monkeypatch.setattr(sampler_lib, "_generate",
                        chex.assert_max_traces(sampler_lib._generate, n=1))
    sampler = sampling.Sampler(TINY, PLAIN, TABLES)
    params = model.init_params(TINY, jax.random.key(0))
    sampler(params, [[3, 4, 5], [6, 7]], jax.random.key(0))
    sampler(params, [[3, 4, 5, 6, 7, 8, 9], [10]], jax.random.key(1))  # Bucket 8 again.
    with pytest.raises(AssertionError, match="traced > 1"):
        sampler(params, [list(range(3, 15)), [10]], jax.random.key(1))  # Bucket 16.


def test_bad_prompts():
    sampler = sampling.Sampler(TINY, PLAIN, TABLES)
    params = model.init_params(TINY, jax.random.key(0))
    with pytest.raises(ValueError, match="largest bucket 16"):
        sampler(params, [list(range(3, 20))], jax.random.key(0))
    with pytest.raises(ValueError, match="at least one token"):
        sampler(params, [[3], []], jax.random.key(0))


@pytest.mark.slow
def test_generate_tool(tmp_path, qwen3_tokenizer_dir):
    from tiny_models import save_tiny_hf_model

    from stepgrpo_jax import tokenizer

    save_tiny_hf_model(str(tmp_path), vocab_size=151_936, hidden_size=32, eos_token_id=151645)
    for name in os.listdir(qwen3_tokenizer_dir):
        shutil.copy(os.path.join(qwen3_tokenizer_dir, name), tmp_path)
    generate = fixtures.load_tool("generate")
    out = tmp_path / "out.json"
    args = ["--model_dir", str(tmp_path), "--num_samples", "2", "--max_new_tokens", "12",
            "--dtype", "float32", "--json", str(out)]
    result = generate.main(args + ["--prompt", "What is 2+3?", "--dtr", "--temperature", "0"])
    with open(out) as f:
        assert json.load(f) == result
    tok = tokenizer.load(str(tmp_path))
    assert result["prompt_ids"] == tok.encode(tokenizer.chat_prompt("What is 2+3?"))
    first, second = result["completions"]
    assert first == second  # Greedy.
    assert len(first["token_ids"]) == len(first["logprobs"]) == 12
    assert first["exit_reason"] in sampling.EXIT_REASONS
    assert first["text"] == tok.decode(first["token_ids"])
    # Three samples on one row of the engine equal the static batch's.
    sampled = ["--prompt", "What is 2+3?", "--dtr", "--num_samples", "3", "--seed", "1"]
    static = generate.main(args + sampled + ["--engine", "static"])["completions"]
    engine = generate.main(args + sampled + ["--rows", "1"])["completions"]
    assert [c["token_ids"] for c in engine] == [c["token_ids"] for c in static]
    assert len({tuple(c["token_ids"]) for c in static}) > 1
    with pytest.raises(SystemExit):
        generate.main(args + ["--prompt_ids", "1,x"])
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        generate.main(args + ["--prompt_ids", "1,999999"])


def _distributed_rows(process_id: int, out: str) -> None:
    """Worker of test_two_processes_match_one (after `jax.distributed.initialize`): this
    process's half of the batch, sampled on a mesh over both processes' devices."""
    mesh = parallel.make_mesh((2, 2, 2))
    params = model.init_params(TINY, jax.random.key(0))
    params = jax.device_put(params, parallel.tree_shardings(mesh, model.param_axes(TINY), params))
    rows = random_prompts(5, 8)[process_id * 4:(process_id + 1) * 4]
    got = sampling.Sampler(TINY, PLAIN, TABLES, mesh)(params, rows, jax.random.key(0))
    np.savez(out, **{k: v for k, v in vars(got).items() if k != "num_steps"})
    # The engine: 2 prompts x 2 samples per process, 4 rows over both processes' devices.
    prompts = random_prompts(6, 4)[process_id * 2:(process_id + 1) * 2]
    engine = sampling.Engine(TINY, DTR_CFG, DTR_TABLES, num_rows=4, mesh=mesh)
    got = engine.rollout(params, prompts, 2, jax.random.key(1))
    np.savez(out.replace(".npz", "_engine.npz"), **vars(got))


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    """Each process passes its own rows and gets them back (jax.distributed on CPU), from the
    static sampler and from the engine (whose queue holds both processes' requests)."""
    fixtures.run_processes(lambda i, port: [
        fixtures.PYTHON, "-c",
        f"import jax, sys; jax.distributed.initialize('127.0.0.1:{port}', 2, {i}); "
        "sys.path.insert(0, 'tests'); import sampling_test; "
        f"sampling_test._distributed_rows({i}, '{tmp_path}/{i}.npz')"],
        devices=4, timeout=240)  # A hung collective fails instead of stalling.
    want = sampling.Sampler(TINY, PLAIN, TABLES)(model.init_params(TINY, jax.random.key(0)),
                                                 random_prompts(5, 8), jax.random.key(0))
    engine_want = sampling.Sampler(TINY, DTR_CFG, DTR_TABLES).rollout(
        model.init_params(TINY, jax.random.key(0)), random_prompts(6, 4), 2, jax.random.key(1))
    for i in range(2):
        for got, ref in ((np.load(tmp_path / f"{i}.npz"), want),
                         (np.load(tmp_path / f"{i}_engine.npz"), engine_want)):
            for field in ("tokens", "lengths", "step_counts", "exit_reasons"):
                np.testing.assert_array_equal(got[field], getattr(ref, field)[i * 4:(i + 1) * 4])

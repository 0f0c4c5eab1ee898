"""Benchmark evaluation with plain sampling: accuracy (pass@1 averaged over k samples), mean
response tokens, steps, and the compression rate against a base model's results file.

  python main.py --config configs/eval.py --config.model_dir=D --config.eval.files=a.jsonl,b.jsonl
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from stepgrpo_jax import checkpoint, data, grading, parallel, rewards, sampling, tokenizer
from stepgrpo_jax.model import Params


def evaluate_problems(sampler: sampling.Engine | sampling.Sampler, params: Params, tok,
                      problems: Sequence[data.Problem], num_samples: int,
                      grader: grading.Grader, rng: jax.Array,
                      triggers: Sequence[str] = ("Wait",)) -> dict[str, Any]:
    """Samples k completions per problem (this host's share) and grades them.

    Returns means over every sample of every problem on every host, per-sample records, and
    this host's sampling wall time in seconds (compiles included).
    """
    prompts = [tokenizer.encode_problem(tok, p.problem) for p in problems]
    t0 = time.perf_counter()
    out = sampler.rollout(params, prompts, num_samples, rng, progress=True)
    seconds = time.perf_counter() - t0
    rows = [(i, p) for i, p in enumerate(problems) for _ in range(num_samples)]
    texts = tok.batch_decode([out.completion(j) for j in range(len(rows))],
                             skip_special_tokens=False)
    boxes = [grading.answer_boxes(t) for t in texts]
    graded = grader.grade([p.answer for _, p in rows], boxes)
    records = [{
        "problem": i, "source": p.source, "correct": bool(graded.correct[j]),
        "formatted": bool(boxes[j]), "tokens": int(out.lengths[j]),
        "steps": rewards.count_steps(texts[j], triggers), "exit_reason": out.exit_reason(j),
        "text": texts[j]} for j, (i, p) in enumerate(rows)]
    summary = {k: _global_mean([r[k] for r in records]) for k in
               ("correct", "formatted", "tokens", "steps")}
    return {"accuracy": summary["correct"], "format_rate": summary["formatted"],
            "response_tokens_mean": summary["tokens"], "steps_mean": summary["steps"],
            "num_problems": len(problems) * jax.process_count(), "num_samples": num_samples,
            "sampling_seconds": seconds, "records": records}


def _global_mean(values: list[float]) -> float:
    """Mean over every host's values (hosts may hold different counts)."""
    return parallel.process_sum(float(np.sum(values))) / max(parallel.process_sum(len(values)),
                                                              1.0)


def host_share(problems: Sequence[data.Problem]) -> list[data.Problem]:
    """This process's problems (every host evaluates a disjoint, equal share)."""
    n = jax.process_count()
    keep = len(problems) - len(problems) % n
    return list(problems[jax.process_index():keep:n])


def compression(results: dict[str, dict], base_file: str) -> dict[str, float]:
    """Per benchmark: mean tokens / the base model's mean tokens on the same benchmark."""
    with open(base_file) as f:
        base = json.load(f)["benchmarks"]
    return {name: r["response_tokens_mean"] / base[name]["response_tokens_mean"]
            for name, r in results.items() if name in base}


def format_table(results: dict[str, dict]) -> str:
    header = f"{'benchmark':<24}{'accuracy':>10}{'tokens':>10}{'steps':>8}{'compression':>13}"
    lines = [header, "-" * len(header)]
    for name, r in results.items():
        comp = f"{r['compression']:.1%}" if "compression" in r else "-"
        lines.append(f"{name:<24}{r['accuracy']:>10.1%}{r['response_tokens_mean']:>10.1f}"
                     f"{r['steps_mean']:>8.2f}{comp:>13}")
    return "\n".join(lines)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Evaluates `config.model_dir` on every file of `config.eval.files`; writes the results
    (per benchmark: means and per-sample records) as JSON and prints a table."""
    files = data.as_list(config.eval.files)
    if not files:
        raise ValueError("config.eval.files is empty: name the benchmark files to evaluate")
    if not config.model_dir:
        raise ValueError("config.model_dir is empty: name the model to evaluate")
    mesh = parallel.make_mesh(config.mesh.shape)
    parallel.check_batch_divides(config.eval.batch_size, mesh, "eval.batch_size")
    tok = tokenizer.load(config.tokenizer_dir or config.model_dir)
    model_cfg, params = checkpoint.initial_model(config, mesh)
    tables = sampling.TriggerTables.from_tokenizer(tok, tuple(config.dtr.triggers),
                                                   model_cfg.vocab_size)
    sampler = sampling.make_sampler(
        config.sampling.engine, model_cfg,
        sampling.SamplerConfig.from_config(config, tok, evaluation=True), tables,
        config.eval.batch_size, mesh)
    results = {}
    with grading.Grader(rewards.RewardConfig.from_config(config)) as grader:
        for path in files:
            source, _ = data.load_from_config(
                config.data, [path], functools.partial(tokenizer.problem_prompt_lengths, tok),
                max(config.sampling.prompt_buckets))
            problems = [source[i] for i in range(len(source))]
            if config.eval.max_problems:
                problems = problems[:config.eval.max_problems]
            name = os.path.splitext(os.path.basename(path))[0]
            results[name] = evaluate_problems(
                sampler, params, tok, host_share(problems), config.eval.num_samples, grader,
                jax.random.key(config.seed), tuple(config.dtr.triggers))
    if config.eval.base_results:
        for name, rate in compression(results, config.eval.base_results).items():
            results[name]["compression"] = rate
    out = config.eval.out or os.path.join(workdir, "eval.json")
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump({"model_dir": config.model_dir, "benchmarks": results}, f, indent=1)
        print(format_table(results))
        print(f"wrote {out}")
    return {"model_dir": config.model_dir, "benchmarks": results}

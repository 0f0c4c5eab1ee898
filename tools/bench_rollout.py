r"""Rollout throughput: the static sampler against the rollout engine, in one process.

Static: the rollout cut into chunks of --rows rows, each decoding until its longest row ends (how
rollouts ran before the engine). Engine: a pool of --rows rows refilled from the queue. Both get
the same params, prompts and key, so their completions must be equal (printed). Each runs once
to compile, then --repeats timed rollouts taken in turns. Tokens/s = completion tokens / wall
seconds of a rollout (prefill included); occupancy = completion tokens / (rows x decode
iterations).

Workloads:
- `heavy` (default): heavy-tailed lengths from a tiny model made to stop at lengths it draws
  itself. After the prompt's last token it samples a countdown start from a lognormal law of
  lengths (median --budget / 8, 5% past the budget), then counts down one token a step to EOS.
- `testbed`: a Step-GRPO rollout (DTR on, temperature 1) of a warm-started testbed model
  (`--model_dir`, a checkpoint of the demo's SFT stage, with its `--tokenizer_dir`) on testbed
  problems, 5 samples each.

  python tools/bench_rollout.py --json heavy.json
  python tools/bench_rollout.py --workload testbed --model_dir D/sft/checkpoints \
      --tokenizer_dir D/testbed/tokenizer --json testbed.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from stepgrpo_jax import model, sampling

EOS, THINK_END, DRAW = 1, 2, 3  # THINK_END is never drawn: the heavy workload has no thinking.


def length_law(budget: int, share_at_budget: float = 0.05) -> np.ndarray:
    """P(length = l) for l = 0..budget+1, lognormal with median budget / 8 and `share_at_budget`
    of the mass past the budget (put on budget + 1), rounded to integers >= 2."""
    sigma = math.log(8) / statistics.NormalDist().inv_cdf(1 - share_at_budget)
    cdf = statistics.NormalDist(math.log(budget / 8), sigma).cdf
    edges = [0.0] + [cdf(math.log(n + 0.5)) for n in range(2, budget + 1)] + [1.0]
    p = np.zeros(budget + 2)
    p[2:] = np.diff(edges)
    return p


def countdown_model(budget: int, seed: int) -> tuple[model.ModelConfig, model.Params]:
    """A 4-layer model whose embedding is one-hot and whose layers write nothing to the residual
    stream (they still run: attention and MLP cost what they cost), so its logits are those of
    the LM head row of the last token. Token c_j = 4 + j (j = 0..budget-1) counts down: c_j ->
    c_{j-1}, c_0 -> EOS, each at logit 40 against 0. After DRAW it draws c_j with probability
    length_law(l = j + 2): a completion c_j, ..., c_0, EOS has j + 2 tokens."""
    vocab = 4 + budget + 60  # 60 filler tokens for prompts.
    width = -(-vocab // 64) * 64
    cfg = model.ModelConfig(vocab_size=width, embed_dim=width, mlp_dim=2 * width, num_layers=4,
                            num_heads=4, num_kv_heads=2, head_dim=64, tie_word_embeddings=False,
                            attention_block=64)
    params = jax.tree.map(np.asarray, model.init_params(cfg, jax.random.key(seed)))
    params["embed_tokens"] = np.eye(width, dtype=np.float32)
    params["layers"]["o_proj"] = np.zeros_like(params["layers"]["o_proj"])
    params["layers"]["down_proj"] = np.zeros_like(params["layers"]["down_proj"])
    target = np.zeros((width, width), np.float32)
    chain = 4 + np.arange(budget)
    target[chain[1:], chain[:-1]] = 40.0
    target[chain[0], EOS] = 40.0
    with np.errstate(divide="ignore"):
        target[DRAW, chain] = 40.0 + np.log(length_law(budget)[2:])
    # The final norm scales a one-hot row to sqrt(width).
    params["lm_head"] = target / math.sqrt(width)
    return cfg, jax.tree.map(jnp.asarray, params)


def heavy_workload(args):
    cfg, params = countdown_model(args.budget, args.seed)
    rng = np.random.default_rng(args.seed)
    prompts = [rng.integers(4 + args.budget, 4 + args.budget + 60, rng.integers(8, 16)).tolist()
               + [DRAW] for _ in range(args.prompts)]
    scfg = sampling.SamplerConfig(max_new_tokens=args.budget, prompt_buckets=(16,),
                                  temperature=1.0, eos_ids=(EOS,), think_end_id=THINK_END,
                                  cache_dtype="float32")
    tables = sampling.TriggerTables.from_strings([""] * cfg.vocab_size, ("Wait",))
    return cfg, params, scfg, tables, prompts


def testbed_workload(args):
    from stepgrpo_jax import checkpoint, testbed, tokenizer

    tok = tokenizer.load(args.tokenizer_dir)
    cfg, params = checkpoint.load_model(args.model_dir, dtype=jnp.float32)
    problems = testbed.make_problems(args.prompts, f"{args.seed}/bench")
    prompts = [tokenizer.encode_problem(tok, p["problem"]) for p in problems]
    dtr = sampling.DTRConfig.from_tokenizer(tok, exit_margin=10)  # As configs/demo.py.
    scfg = sampling.SamplerConfig(
        max_new_tokens=args.budget, prompt_buckets=(64,), temperature=1.0,
        eos_ids=(tok.eos_token_id,), think_end_id=tok.convert_tokens_to_ids("</think>"),
        pad_id=tok.pad_token_id, cache_dtype="float32", dtr=dtr)
    tables = sampling.TriggerTables.from_tokenizer(tok, ("Wait",), cfg.vocab_size)
    return cfg, params, scfg, tables, prompts


def histogram(lengths: np.ndarray, budget: int, bins: int = 16) -> str:
    edges = np.linspace(0, budget, bins + 1).astype(int)
    counts = np.histogram(lengths, edges)[0]
    width = 50 / max(counts.max(), 1)
    return "\n".join(f"{lo:>5}-{hi:<5}{c:>6} {'#' * math.ceil(c * width)}"
                     for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True))


def equal(a: sampling.SampleOutput, b: sampling.SampleOutput) -> bool:
    fields = ("tokens", "lengths", "forced", "step_counts", "num_probes", "exit_reasons")
    return (all(np.array_equal(getattr(a, f), getattr(b, f)) for f in fields)
            and np.allclose(a.logprobs, b.logprobs, atol=1e-4))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", choices=["heavy", "testbed"], default="heavy")
    parser.add_argument("--budget", type=int, default=256, help="max new tokens")
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--group_size", type=int, default=4)
    parser.add_argument("--rows", type=int, default=16, help="engine pool = static chunk")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model_dir", help="testbed: a warm-started checkpoint")
    parser.add_argument("--tokenizer_dir", help="testbed: its tokenizer")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if args.workload == "testbed" and not (args.model_dir and args.tokenizer_dir):
        parser.error("--workload testbed needs --model_dir and --tokenizer_dir")
    load = heavy_workload if args.workload == "heavy" else testbed_workload
    cfg, params, scfg, tables, prompts = load(args)
    G, rows, key = args.group_size, args.rows, jax.random.key(args.seed)
    requests = [p for p in prompts for _ in range(G)]
    static = sampling.Sampler(cfg, scfg, tables, rows=rows)
    engine = sampling.Engine(cfg, scfg, tables, num_rows=rows)
    runners = {"static": lambda: static.rollout(params, prompts, G, key),
               "continuous": lambda: engine.rollout(params, prompts, G, key)}
    outputs = {name: run() for name, run in runners.items()}  # Compiles.
    seconds = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            outputs[name] = run()
            seconds[name].append(time.perf_counter() - start)
    tokens = int(outputs["static"].lengths.sum())
    result = {"workload": args.workload, "requests": len(requests), "rows": rows,
              "budget": args.budget, "tokens": tokens, "machine": platform.machine(),
              "cores": os.cpu_count(), "jax": jax.__version__,
              "load_average": os.getloadavg()[0]}
    for name, out in outputs.items():
        rates = [tokens / s for s in seconds[name]]
        result[name] = {"tokens_per_second": statistics.median(rates),
                        "tokens_per_second_runs": [round(r, 1) for r in rates],
                        "occupancy": out.occupancy, "decode_steps": out.num_steps,
                        "prefill_tokens": out.prefill_tokens}
    result["speedup"] = (result["continuous"]["tokens_per_second"]
                         / result["static"]["tokens_per_second"])
    result["equal"] = equal(outputs["static"], outputs["continuous"])
    out = outputs["continuous"]
    result["exit_reasons"] = {r: int((out.exit_reasons == i).sum())
                              for i, r in enumerate(sampling.EXIT_REASONS)}
    result["probes"] = int(out.num_probes.sum())
    print(f"completion lengths ({len(requests)} requests, budget {args.budget}):")
    print(histogram(out.lengths, args.budget))
    print(f"exit reasons {result['exit_reasons']}, probes {result['probes']}")
    print(f"{'':<12}{'tokens/s (runs)':>28}{'occupancy':>11}{'decode steps':>14}"
          f"{'prefill tokens':>16}")
    for name in runners:
        r = result[name]
        runs = ", ".join(f"{x:.0f}" for x in r["tokens_per_second_runs"])
        print(f"{name:<12}{r['tokens_per_second']:>10.0f} ({runs}){r['occupancy']:>11.3f}"
              f"{r['decode_steps']:>14}{r['prefill_tokens']:>16}")
    print(f"speedup {result['speedup']:.2f}x, completions equal: {result['equal']}, "
          f"load average {result['load_average']:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()

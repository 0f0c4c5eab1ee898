r"""One decode step at 10% and 90% cache fill: XLA's compiled bytes accessed, and CPU time.

Decoding reads key blocks only up to the longest row's filled length (`qwen3._cached_attention`),
so a step should cost in proportion to the fill, not to the cache's capacity. `--block 0` makes
the whole cache one block, read every step: what decoding did before, for comparison.

XLA's cost analysis counts a loop body once, whatever its trip count, and the block loop runs
ceil(fill / block) times. So the bytes of a step are: the compiled step (which counts one block)
plus (trips - 1) x the compiled block read alone (`qwen3.read_cache_block`). The model has one
layer so that the layer scan, a loop too, runs once and is counted exactly. The analysis also
counts the in-place write of the new slot (a scatter) as touching the whole cache, a constant
2 x cache size in every row of the table; the step's time does not depend on the capacity.

  python tools/bench_decode_fill.py --json fill.json
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import time

import jax
import jax.numpy as jnp

from stepgrpo_jax import model
from stepgrpo_jax.model import qwen3


def bytes_accessed(compiled) -> float:
    cost = compiled.cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["bytes accessed"])


def measure(cfg: model.ModelConfig, batch: int, slots: int, fill: float, repeats: int
            ) -> dict[str, float]:
    params = model.init_params(cfg, jax.random.key(0))
    cache = model.init_cache(cfg, batch, slots, jnp.float32)
    position = int(fill * slots) - 1  # The step writes the slot that brings the fill to `fill`.
    ids = jnp.ones((batch, 1), jnp.int32)
    positions = jnp.full((batch, 1), position, jnp.int32)
    step = jax.jit(functools.partial(model.forward, cfg), donate_argnames="cache")
    compiled = step.lower(params, ids, positions=positions, cache=cache).compile()
    size = cfg.attention_block or slots
    trips = math.ceil((position + 1) / size)
    # One trip of the block loop on its own, with the shapes the step gives it.
    G = cfg.num_heads // cfg.num_kv_heads
    q = jnp.zeros((batch, 1, cfg.num_kv_heads, G, cfg.head_dim))
    block = jax.jit(functools.partial(qwen3.read_cache_block, size=size)).lower(
        0, qwen3._online_init(q), q, cache.k, cache.v, 0, positions).compile()
    total = bytes_accessed(compiled) + (trips - 1) * bytes_accessed(block)
    times = []
    for _ in range(repeats + 1):  # The first call warms up.
        start = time.perf_counter()
        logits, cache = compiled(params, ids, positions=positions, cache=cache)
        logits.block_until_ready()
        times.append(time.perf_counter() - start)
    return {"fill": fill, "block_trips": trips, "bytes_accessed": total,
            "block_bytes_accessed": bytes_accessed(block),
            "ms_median": 1e3 * statistics.median(times[1:]), "ms_min": 1e3 * min(times[1:])}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--slots", type=int, default=8192, help="cache capacity per row")
    parser.add_argument("--block", type=int, default=256, help="key block; 0: the whole cache")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    cfg = model.ModelConfig(vocab_size=1024, embed_dim=256, mlp_dim=512, num_layers=1,
                            num_heads=8, num_kv_heads=4, head_dim=64,
                            attention_block=args.block)
    results = {}
    for block in (args.block, 0):
        c = cfg.replace(attention_block=block)
        results[f"block_{block}"] = [measure(c, args.batch, args.slots, f, args.repeats)
                                     for f in (0.1, 0.9)]
    cache_mb = 2 * args.batch * args.slots * cfg.num_kv_heads * cfg.head_dim * 4 / 1e6
    print(f"one decode step, 1 layer, batch {args.batch}, {args.slots} slots "
          f"(K and V {cache_mb:.0f} MB, float32), jax {jax.__version__}")
    print(f"{'block':>6}{'fill':>6}{'trips':>7}{'MB accessed':>13}{'of which blocks':>17}"
          f"{'ms median':>11}{'ms min':>8}")
    for name, rows in results.items():
        for r in rows:
            blocks = r["block_trips"] * r["block_bytes_accessed"]
            print(f"{name[6:]:>6}{r['fill']:>6.0%}{r['block_trips']:>7}"
                  f"{r['bytes_accessed'] / 1e6:>13.1f}{blocks / 1e6:>17.1f}"
                  f"{r['ms_median']:>11.2f}{r['ms_min']:>8.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"batch": args.batch, "slots": args.slots, **results}, f, indent=1)


if __name__ == "__main__":
    main()

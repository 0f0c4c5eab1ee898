"""Benchmark evaluation with plain sampling (Qwen3 thinking settings: T=0.6, top-p 0.95, top-k 20).

  python main.py --config configs/eval.py --workdir /tmp/eval --config.model_dir=/models/Qwen3-8B \
      --config.eval.files=gsm8k.jsonl,math500.jsonl --config.eval.num_samples=4

Each file is one benchmark with `problem` and `answer` fields (see data.* for other layouts).
Pass `--config.eval.base_results=base/eval.json` for compression rates against a base model.

Presets for the files `tools/prepare_benchmarks.py` writes (GSM8K test, MATH-500, and the
training sets), several joined by `+`, from its default folder or `dir=`:

  python main.py --config configs/eval.py:bench=gsm8k+math500 --workdir /tmp/eval \
      --config.model_dir=/models/Qwen3-8B
"""

import os

from configs import common, default

BENCH_DIR = os.path.join(os.path.expanduser("~"), ".cache", "stepgrpo_jax", "benchmarks")
BENCHES = {"gsm8k": "gsm8k_test", "math500": "math500", "gsm8k_train": "gsm8k_train",
           "math_train": "math_train"}


def get_config(arg=None):
    arg = common.parse_arg(arg, bench="", dir=BENCH_DIR)
    c = default.get_config()
    c.mode = "eval"
    c.mesh.shape = (1, -1, 1)
    c.eval.max_new_tokens = 32768
    c.sampling.batch_size = 64
    if arg.bench:
        names = arg.bench.split("+")
        unknown = [n for n in names if n not in BENCHES]
        if unknown:
            raise ValueError(f"bench={arg.bench!r}: unknown {unknown}; expected names from "
                             f"{sorted(BENCHES)} joined by '+'")
        c.eval.files = tuple(os.path.join(arg.dir, f"{BENCHES[n]}.jsonl") for n in names)
    return c

"""Benchmark evaluation with plain sampling (Qwen3 thinking settings: T=0.6, top-p 0.95, top-k 20).

  python main.py --config configs/eval.py --workdir /tmp/eval --config.model_dir=/models/Qwen3-8B \
      --config.eval.files=gsm8k.jsonl,math500.jsonl --config.eval.num_samples=4

Each file is one benchmark with `problem` and `answer` fields (see data.* for other layouts).
Pass `--config.eval.base_results=base/eval.json` for compression rates against a base model.
"""

from configs import default


def get_config():
    c = default.get_config()
    c.mode = "eval"
    c.mesh.shape = (1, -1, 1)
    c.eval.max_new_tokens = 32768
    c.sampling.batch_size = 64
    return c

"""Baseline: plain GRPO (accuracy reward, no DTR) with everything else as Step-GRPO.

  python main.py --config configs/grpo.py:size=qwen3-8b,platform=gpu8 --workdir /ckpt/grpo-8b \
      --config.model_dir=/models/Qwen3-8B --config.data.train_files=/data/dapo-math-17k.parquet
"""

from configs import common


def get_config(arg: str | None = None):
    arg = common.parse_arg(arg, size="qwen3-8b", platform="gpu8")
    c = common.step_grpo_config(arg.size, f"platform={arg.platform}")
    c.reward.kind = "grpo"
    c.dtr.enabled = False
    return c

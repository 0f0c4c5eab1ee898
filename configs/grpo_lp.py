"""Baseline: GRPO + the Kimi k1.5 length penalty (no DTR), as in SPEC §4.

  python main.py --config configs/grpo_lp.py:size=qwen3-8b,platform=gpu8 --workdir /ckpt/lp-8b \
      --config.model_dir=/models/Qwen3-8B --config.data.train_files=/data/dapo-math-17k.parquet
"""

from configs import common


def get_config(arg: str | None = None):
    arg = common.parse_arg(arg, size="qwen3-8b", platform="gpu8")
    c = common.step_grpo_config(arg.size, f"platform={arg.platform}")
    c.reward.kind = "grpo_lp"
    c.dtr.enabled = False
    return c

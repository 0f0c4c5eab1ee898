r"""Step-GRPO on Qwen3-4B: the paper's setup (SPEC §5) on DAPO-Math-17k.

  python main.py --config configs/qwen3_4b_step_grpo.py:platform=gpu8 \
      --workdir /ckpt/step-grpo-4b \
      --config.model_dir=/models/Qwen3-4B --config.data.train_files=/data/dapo-math-17k.parquet

`platform` picks the mesh: gpu8 (one 8-GPU node) or v5p (a TPU v5p slice, all chips).
"""

from configs import common


def get_config(arg: str = "platform=gpu8"):
    return common.step_grpo_config("qwen3-4b", arg)

"""Shared pieces of the experiment configs: argument parsing, the paper's setup, platforms."""

import ml_collections

from configs import default

# Mesh (data, fsdp, tensor) and per-host sampler rows by platform and model size. The KV cache
# of one 18k-token row is ~2.7 GB for 8B in bf16, which bounds the rows per sampler call.
PLATFORMS = {
    "gpu8": {"qwen3-1.7b": ((1, 8, 1), 128), "qwen3-4b": ((1, 8, 1), 96),
             "qwen3-8b": ((1, 4, 2), 64)},
    "v5p": {"qwen3-1.7b": ((1, -1, 1), 64), "qwen3-4b": ((1, -1, 1), 48),
            "qwen3-8b": ((1, -1, 2), 32)},
}


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """`"platform=gpu8,runlocal"` -> ConfigDict(platform="gpu8", runlocal=True)."""
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        out[key] = value if value else True
    return ml_collections.ConfigDict(out)


def step_grpo_config(size: str, arg: str | None) -> ml_collections.ConfigDict:
    """The reference run's Step-GRPO setup for a Qwen3 size on a platform."""
    arg = parse_arg(arg, platform="gpu8")
    if arg.platform not in PLATFORMS:
        raise ValueError(f"platform={arg.platform!r}; expected one of {sorted(PLATFORMS)}")
    c = default.get_config()
    c.model.preset = size
    c.data.problem = "prompt.0.content"  # DAPO-Math-17k's parquet layout.
    c.data.answer = "reward_model.ground_truth"
    mesh, rows = PLATFORMS[arg.platform][size]
    c.mesh.shape = mesh
    c.sampling.batch_size = rows
    # One row of 18k tokens per device per micro-batch: 640 rows / mini-batch over the devices.
    c.grpo.num_microbatches = 80 if arg.platform == "gpu8" else 20
    c.eval.max_new_tokens = 32768
    return c

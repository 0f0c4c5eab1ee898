r"""Step-GRPO and its baselines with the paper's setup (SPEC §5) on DAPO-Math-17k.

  python main.py --config configs/step_grpo.py:size=8b,platform=v5p-64 --workdir gs://b/run \
      --config.model_dir=/models/Qwen3-8B --config.data.train_files=/data/dapo-math-17k.parquet
  python main.py --config configs/step_grpo.py:size=4b,platform=gpu8,method=grpo_lp ...
  python main.py --config configs/step_grpo.py:runlocal --workdir /tmp/run \
      --config.tokenizer_dir=/models/Qwen3-8B --config.data.train_files=problems.jsonl
  python main.py --config configs/step_grpo.py:method=grpo,cpu_real --workdir /tmp/run \
      --config.model_dir=/tmp/qwen25

Arguments (comma-separated; all optional):
  size      1.7b | 4b | 8b | 32b: the Qwen3 model (default 8b).
  platform  where it runs: gpu8 (one node of 8 H100/H200) or a TPU slice (v5p-64, v6e-32, ...);
            each size lists the platforms it has a setup for in SETUPS.
  method    step_grpo: the paper's method (step-aware reward + DTR); grpo: plain GRPO (accuracy
            reward, no DTR); grpo_lp: GRPO + the Kimi k1.5 length penalty (no DTR).
  runlocal  a tiny random-init model of the same family with short rollouts, on this CPU.
  cpu_real  a small real model (config.model_dir, e.g. Qwen2.5-Coder-0.5B-Instruct) on GSM8K
            train as tools/prepare_benchmarks.py writes it (folder `dir=`, default that of
            configs/eval.py), in float32, 10 steps (~20 min on 2 idle cores; docs/real-models.md).
  dir       with cpu_real: the folder of the prepared benchmark files.

TPU setups are compiled for their slice on a CPU, which tells whether they fit:
`python tools/aot_compile.py --config configs/step_grpo.py:size=8b,platform=v5p-64
--topology v5p-64`; docs/scale.md gives the plan.
"""

import dataclasses
import os

import ml_collections

from configs import common, default
from configs import eval as eval_presets

SIZES = ("1.7b", "4b", "8b", "32b")
METHODS = ("step_grpo", "grpo", "grpo_lp")


@dataclasses.dataclass(frozen=True)
class Setup:
    """How a model size runs on a platform."""

    mesh: tuple[int, int, int]  # (data, fsdp, tensor); -1 takes the remaining devices.
    rollout_rows: int  # sampling.batch_size: rows per sampler call on each host (KV cache).
    microbatches: int  # grpo.num_microbatches: the update's micro-batches (activations).
    rules: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)  # mesh.rules


# The paper's shapes: 512 prompts x G=5 = 2560 rows per step, 4 mini-batches of 640 rows, prompt
# bucket 2048 + 16384 response tokens. A micro-batch holds 640 / microbatches rows, split over the
# data x fsdp devices. TPU setups are compiled by tools/aot_compile.py; the comments give each
# program's total per chip (docs/scale.md). GPU setups are estimated on this CPU by
# `--topology 8xh100`: the same shapes and shardings compiled by XLA:TPU on 8 v5p chips;
# tools/gpu_bench.sh compiles them with XLA:GPU on a GPU.
SETUPS: dict[tuple[str, str], Setup] = {
    # Estimates (XLA:TPU's plan) of rollout 47.0 GB, log-probs 6.4 GB, update 14.9 GB of 80.
    ("1.7b", "gpu8"): Setup((1, 8, 1), 128, 80),
    # Rollout 66.0 GB, log-probs 12.6 GB, update 28.3 GB of 80, estimated.
    ("4b", "gpu8"): Setup((1, 8, 1), 128, 80),
    # Rollout 47.1 GB, log-probs 21.3 GB, update 57.0 GB of 80, estimated.
    ("8b", "gpu8"): Setup((1, 4, 2), 64, 80),
    # Rollout 57.4 GB, log-probs 9.7 GB, update 29.8 GB of 95.
    ("1.7b", "v5p-16"): Setup((1, -1, 1), 80, 20),
    # Rollout 61.1 GB, log-probs 10.5 GB, update 28.0 GB of 95.
    ("4b", "v5p-32"): Setup((1, -1, 1), 64, 20),
    # Rollout 61.9 GB, log-probs 8.6 GB, update 29.8 GB of 95.
    ("8b", "v5p-64"): Setup((1, -1, 2), 64, 20),
    # Rollout 19.4 GB, log-probs 7.0 GB, update 19.6 GB of 32. 32 rows per host would need
    # 33.4 GB.
    ("8b", "v6e-32"): Setup((1, -1, 2), 16, 40),
    # Rollout 62.4 GB, log-probs 38.6 GB, update 73.3 GB of 95. The smallest v5p slice for 32B,
    # and only with the activations' sequence axis split over `tensor`: with the rules of the
    # other setups the update needs 86.8 GB (one row per batch shard, the floor) and 32 rows
    # per host 88.2 GB. The rule also splits queries and MLP units by sequence rather than by
    # head and unit, which costs collectives plain tensor parallelism does not; how much is
    # not measured yet (docs/scale.md).
    ("32b", "v5p-32"): Setup((1, -1, 4), 16, 160, rules={"act_seq": ("tensor",)}),
    # Rollout 69.7 GB, log-probs 20.9 GB, update 52.6 GB of 95: the tensor-parallel layout.
    ("32b", "v5p-64"): Setup((1, -1, 4), 32, 80),
}
PLATFORMS = tuple(sorted({platform for _, platform in SETUPS}))


def _on_cpu(c: ml_collections.ConfigDict) -> None:
    """What both CPU runs share: float32 (bfloat16 is emulated, so slow, on CPU), one mesh
    axis."""
    c.model.dtype = "float32"
    c.sampling.cache_dtype = "float32"
    c.mesh.shape = (1, -1, 1)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, dict(size=SIZES, platform=PLATFORMS, method=METHODS),
                           source="configs/step_grpo.py", size="8b", platform="gpu8",
                           method="step_grpo", runlocal=False, cpu_real=False,
                           dir=eval_presets.BENCH_DIR)
    c = default.get_config()
    c.model.preset = f"qwen3-{arg.size}"
    c.data.problem = "prompt.0.content"  # DAPO-Math-17k's parquet layout.
    c.data.answer = "reward_model.ground_truth"
    c.eval.max_new_tokens = 32768
    if arg.method != "step_grpo":  # The baselines: the same trainer without DTR.
        c.reward.kind = arg.method
        c.dtr.enabled = False

    if arg.runlocal and arg.cpu_real:
        raise ValueError("configs/step_grpo.py: runlocal and cpu_real are two different CPU runs; "
                         "give one")
    if arg.cpu_real:
        # Sized from Qwen2.5-Coder-0.5B-Instruct (docs/real-models.md): its greedy GSM8K
        # answers take ~280 tokens, and an update costs about five forwards per token (old
        # log-probs, forward, remat, backward); one group of 4 rows of 128 + 256 tokens took
        # about two minutes a step on 2 idle cores (a 55 s rollout, a 55 s update), so 10
        # steps and the start-up are about 20 minutes.
        c.data.train_files = (os.path.join(arg.dir,
                                           f"{eval_presets.BENCHES['gsm8k_train']}.jsonl"),)
        c.data.problem, c.data.answer = "problem", "answer"  # The prepared files' layout.
        _on_cpu(c)
        c.total_steps = 10
        # 88% of GSM8K prompts (Qwen2.5's template, system turn included) fit in 128 tokens,
        # all in 256.
        c.sampling.prompt_buckets = (128, 256)
        c.sampling.max_new_tokens = 256
        c.sampling.batch_size = 4
        c.grpo.group_size = 4
        c.grpo.prompts_per_step = 1
        c.grpo.num_minibatches = 1
        c.grpo.num_microbatches = 2
        # The longest of 4 answers nearly always reaches the budget: one update shape, one
        # compile.
        c.grpo.response_bucket = 0
        c.grpo.chunk_size = 64  # [2, 64, 151,936] float32 logits: 78 MB.
        # No reference model: 2.5 GB less (float32 params, grads and Adam's two moments are
        # already 10 GB), and a few steps cannot drift far from it.
        c.grpo.kl_coef = 0.0
        c.ckpt.every_steps = c.total_steps
        c.ckpt.max_to_keep = 1
        c.log.tensorboard = False
        return c

    if arg.runlocal:
        # Qwen3's vocabulary (so a real Qwen3 tokenizer works) on a 2-layer model. A step took
        # about a minute on a shared 2-core CPU (the first 77 s, with its compiles), most of it
        # the float32 LM head over the 151,936-token vocabulary in the update.
        c.model.overrides = ml_collections.ConfigDict(dict(
            embed_dim=64, mlp_dim=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16))
        _on_cpu(c)
        c.total_steps = 2
        c.sampling.prompt_buckets = (256, 512)
        c.sampling.max_new_tokens = 64
        c.sampling.batch_size = 20
        c.dtr.exit_margin = 8
        c.grpo.prompts_per_step = 4
        c.grpo.num_minibatches = 2
        c.grpo.response_bucket = 32
        # A chunk's float32 logits are [rows, chunk, 151,936]: 1024 would be 6 GB here.
        c.grpo.chunk_size = 64
        c.eval.max_new_tokens = 64
        c.eval.batch_size = 8
        c.ckpt.every_steps = 2
        c.log.tensorboard = False
        return c

    if (arg.size, arg.platform) not in SETUPS:
        known = sorted(p for s, p in SETUPS if s == arg.size)
        raise ValueError(f"configs/step_grpo.py: size={arg.size} has no setup for "
                         f"platform={arg.platform}; it has one for {known}")
    setup = SETUPS[arg.size, arg.platform]
    c.mesh.shape = setup.mesh
    c.mesh.rules.update(setup.rules)
    c.sampling.batch_size = setup.rollout_rows
    c.grpo.num_microbatches = setup.microbatches
    return c

"""Every field of a Step-GRPO run, with the defaults of the paper's reference run (SPEC.md).

Experiments start from this file and change a few lines:

  python main.py --config configs/default.py --workdir /tmp/run \
      --config.model_dir=/models/Qwen3-8B --config.data.train_files=dapo.parquet
"""

import ml_collections

from stepgrpo_jax.sampling import config as sampling_config


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # grpo: RL training; sft: supervised warm start; eval: evaluation only; demo: the
    # overthinking testbed end to end (configs/demo.py).
    c.mode = "grpo"
    c.seed = 0  # Seeds init, data order and sampling (the RNG is folded with the step).
    c.total_steps = 100  # Rollout steps (grpo) or optimiser steps (sft).

    # Model: an HF directory or a checkpoint of ours; empty = random init of `model.preset`.
    c.model_dir = ""
    c.tokenizer_dir = ""  # Default: model_dir.
    c.model = ml_collections.ConfigDict()
    c.model.preset = "qwen3-0.6b"  # Shapes used when model_dir is empty.
    c.model.overrides = ml_collections.ConfigDict()  # ModelConfig fields changed on the preset.
    c.model.dtype = "bfloat16"  # Compute dtype.
    c.model.param_dtype = "float32"  # float32 master weights (bf16 compute) by default.
    c.model.remat = "full"  # none | full | dots | dots_no_batch: what backward recomputes.
    c.model.attention_block = 512  # Flash-style key/query blocks; 0: dense attention.

    c.data = ml_collections.ConfigDict()
    c.data.train_files = ()  # JSONL / Parquet files of problems with reference answers.
    # Field names (data.FieldMap) are dotted paths into a row.
    c.data.problem = "problem"  # Field of the problem text; DAPO-Math-17k: "prompt.0.content".
    c.data.answer = "answer"  # Field of the reference answer; DAPO-Math-17k:
    #                           "reward_model.ground_truth".
    c.data.answer_format = "plain"  # plain | gsm8k (the reference answer follows "####").
    c.data.response = ""  # Field of reference responses, for mode=sft (e.g. "response").
    c.data.skip_malformed = False  # False: a malformed row is an error naming file and line.
    c.data.shuffle = True  # Reshuffle the problems every epoch (seeded by `seed`).
    c.data.cache_dir = ""  # Where the ArrayRecord files go (default ~/.cache/stepgrpo_jax/tfds).

    # Rollouts (SPEC §3 and §5).
    c.sampling = ml_collections.ConfigDict()
    # Prompts pad to the smallest bucket that fits (one compile each); longer is an error.
    c.sampling.prompt_buckets = (128, 256, 512, 1024, 2048)
    c.sampling.max_new_tokens = 16384  # Response budget (thinking + answer).
    # "continuous": a pool of decode rows refilled from the queue as completions finish
    # (sampling.Engine); "static": calls that each decode until their longest row ends.
    c.sampling.engine = "continuous"
    c.sampling.batch_size = 64  # Decode rows on each host (bounds the KV cache).
    c.sampling.temperature = 1.0  # Rollout temperature (0: greedy).
    c.sampling.top_p = 1.0  # Nucleus filter; 1: off.
    c.sampling.top_k = 0  # Top-k filter; 0: off.
    c.sampling.cache_dtype = "bfloat16"  # KV cache dtype.

    # Dynamic Truncated Rollout (SPEC §3); fields named like sampling.DTRConfig's.
    c.dtr = ml_collections.ConfigDict()
    c.dtr.enabled = True  # False: plain sampling (steps are still counted).
    c.dtr.triggers = ("Wait",)  # Words that open a reasoning step.
    c.dtr.threshold = 0.95  # Exit thinking when probe confidence > threshold (strict).
    c.dtr.probe_prompt = sampling_config.PROBE_PROMPT  # Appended to probe for an answer.
    c.dtr.probe_budget = 20  # Greedy probe tokens before the probe counts as unsure.
    c.dtr.max_probes = 10  # Probes per completion; after that it runs free.
    c.dtr.think_budget_frac = 0.9  # Thinking budget = this x max_new_tokens.
    c.dtr.exit_margin = 50  # Within this many tokens of the budget, any probe exits.
    c.dtr.exit_suffix = sampling_config.EXIT_SUFFIX  # Appended when a probe ends the thinking.
    c.dtr.mask_forced = False  # True: appended (forced) tokens get no loss.

    c.reward = ml_collections.ConfigDict()
    # step_grpo | step_grpo_all_mu | no_step | grpo | grpo_lp (see rewards.group_rewards).
    c.reward.kind = "step_grpo"
    c.reward.alpha = 0.9  # Weight of accuracy vs format.
    c.reward.beta = 0.5  # Strength of the step bonus / penalty.
    c.reward.overlong = False  # DAPO soft overlong punishment on top.
    c.reward.overlong_cache_len = 4096  # Its soft band below max_new_tokens.
    c.reward.grader_timeout_s = 5.0  # A slower answer counts as wrong (and is counted).
    c.reward.grader_workers = 2  # Grader processes (math-verify runs outside the trainer).

    # GRPO (SPEC §5); the loss fields are named like grpo.LossConfig's.
    c.grpo = ml_collections.ConfigDict()
    c.grpo.group_size = 5  # G completions per prompt.
    c.grpo.prompts_per_step = 512  # Prompts per rollout step (all hosts).
    c.grpo.num_minibatches = 4  # Optimiser updates per rollout step.
    c.grpo.num_microbatches = 1  # Gradient accumulation inside one update.
    c.grpo.adv_scale = "group"  # Advantage divisor: group | batch std, or none.
    c.grpo.eps_low = 0.2  # Ratio clip below: 1 - eps_low.
    c.grpo.eps_high = 0.3  # Ratio clip above: 1 + eps_high (clip-higher).
    c.grpo.dual_clip = 3.0  # Bound c on -A*ratio for negative advantages.
    c.grpo.logratio_clip = 20.0  # |log-ratio| bound before exp, so ratios stay finite.
    c.grpo.kl_coef = 0.01  # 0 skips the reference model entirely.
    c.grpo.kl_estimator = "k3"  # k1 | k2 | k3 (low_var_kl).
    c.grpo.loss_agg = "token-mean"  # token-mean | seq-mean-token-mean | seq-mean-token-sum-norm.
    # Positions per chunk of the log-prob computation: [rows, chunk, vocab] float32 logits
    # exist one chunk at a time.
    c.grpo.chunk_size = 1024
    # Update batches pad responses to the step's longest, rounded up to this many tokens (one
    # compile per size); 0 pads to sampling.max_new_tokens always.
    c.grpo.response_bucket = 1024

    c.optim = ml_collections.ConfigDict()  # AdamW (train_state.make_optimizer).
    c.optim.learning_rate = 1e-6  # Peak learning rate.
    c.optim.schedule = "constant"  # constant | cosine | linear (decay to 0 at the last update).
    c.optim.warmup_steps = 0  # Linear warm-up from 0, in optimiser updates.
    c.optim.weight_decay = 0.01  # AdamW's decoupled weight decay.
    c.optim.grad_clip = 1.0  # Global gradient-norm clip.
    c.optim.max_skipped = 5  # Stop after this many non-finite updates in a row.

    c.sft = ml_collections.ConfigDict()  # Supervised warm start (mode=sft).
    c.sft.batch_size = 64  # Rows per optimiser step (all hosts).
    c.sft.max_seq_len = 1024  # Prompt + response tokens; a longer row is an error.

    c.mesh = ml_collections.ConfigDict()  # Device mesh and sharding (parallel.py).
    c.mesh.shape = (1, -1, 1)  # (data, fsdp, tensor); -1 takes the remaining devices.
    c.mesh.rules = ml_collections.ConfigDict()  # Logical axis -> mesh axes overrides.

    c.ckpt = ml_collections.ConfigDict()  # Orbax checkpoints in {workdir}/checkpoints.
    c.ckpt.every_steps = 10  # Save every this many steps (and at the last one).
    c.ckpt.max_to_keep = 3  # Older steps are deleted.
    c.ckpt.async_save = True  # Write in the background while training goes on.

    c.eval = ml_collections.ConfigDict()  # Evaluation (mode=eval, or periodic in training).
    c.eval.files = ()  # Held-out files (same field mapping as data).
    c.eval.every_steps = 0  # 0: only at the end of training (if files are given).
    c.eval.max_problems = 0  # 0: all.
    c.eval.num_samples = 1  # k samples per problem; accuracy is pass@1 averaged over k.
    c.eval.batch_size = 64  # Rows per sampler call (all hosts).
    c.eval.temperature = 0.6  # Qwen3's thinking-mode settings, like the two below.
    c.eval.top_p = 0.95
    c.eval.top_k = 20
    c.eval.max_new_tokens = 16384  # Response budget of evaluation.
    # True: close thinking at the first step boundary (DTR forcing the exit there), to measure
    # what the steps after the first attempt are worth.
    c.eval.exit_after_first_step = False
    c.eval.base_results = ""  # Results JSON of the base model, for compression rates.
    c.eval.out = ""  # Default: {workdir}/eval.json.

    c.log = ml_collections.ConfigDict()
    c.log.every_steps = 1  # Metrics to {workdir}/metrics.jsonl every this many steps.
    c.log.tensorboard = True  # Also TensorBoard scalars in {workdir}/tensorboard.
    return c

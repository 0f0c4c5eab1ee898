"""The embedded default: the overthinking testbed on a laptop CPU (about 10 minutes on 2 cores).

  python main.py --config configs/demo.py --workdir /tmp/demo

Builds the testbed, warm-starts a small Qwen3-architecture model on teacher traces that
overthink, measures it, trains it with Step-GRPO, measures again, and writes summary.json.
"""

import ml_collections

from configs import default


def get_config():
    c = default.get_config()
    c.mode = "demo"
    c.total_steps = 24  # Step-GRPO rollout steps.

    c.demo = ml_collections.ConfigDict()
    c.demo.data_seed = 0
    c.demo.difficulties = (1, 2, 3)
    c.demo.n_train = 1500  # Problems of the GRPO steps (they may repeat).
    c.demo.n_eval = 300
    c.demo.n_sft = 9600  # One pass of the warm start.
    c.demo.sft_steps = 600
    c.demo.sft_learning_rate = 1e-2
    c.demo.sft_warmup_steps = 20
    # A second warm-start round (demo.warm_start; 0: none): it makes the careful check reliable.
    c.demo.sft_more_steps = 600
    c.demo.sft_more_learning_rate = 5e-3

    # A small Qwen3: 4 layers, width 96, the testbed's 403-token vocabulary padded to 416.
    # RoPE at 1e4 rather than Qwen3's 1e6: sequences are short, and the fast frequencies are
    # what let attention find the token a fixed few places back.
    c.model.overrides = ml_collections.ConfigDict(dict(
        vocab_size=416, embed_dim=96, mlp_dim=288, num_layers=4, num_heads=4, num_kv_heads=2,
        head_dim=24, tie_word_embeddings=True, bos_token_id=0, eos_token_id=2,
        rope_theta=10_000.0))
    c.model.dtype = "float32"
    c.model.param_dtype = "float32"
    c.model.remat = "none"
    c.mesh.shape = (1, -1, 1)

    c.sft.batch_size = 16
    c.sft.max_seq_len = 320

    c.sampling.max_new_tokens = 256
    c.sampling.prompt_buckets = (64,)
    c.sampling.batch_size = 160  # Decode rows: every completion of a step starts at once.
    c.sampling.cache_dtype = "float32"  # bfloat16 is emulated, so slow, on CPU.
    c.dtr.exit_margin = 10
    # Probe at the first step boundary only. After the careful check the probe is always
    # confident (every trace closes after it), so probing there too would cut nearly every
    # rollout before its re-checks, and the step reward would have no redundant steps to rank.
    c.dtr.max_probes = 1

    c.grpo.group_size = 5
    c.grpo.prompts_per_step = 32
    c.grpo.num_minibatches = 4
    c.grpo.chunk_size = 128
    c.grpo.response_bucket = 64
    c.optim.learning_rate = 1e-4
    c.optim.weight_decay = 0.0

    c.ckpt.every_steps = 12
    c.eval.max_problems = 300
    c.eval.batch_size = 100
    c.eval.max_new_tokens = 256
    c.log.tensorboard = False
    return c

"""A tiny Step-GRPO run on the overthinking testbed for end-to-end tests (random init).

  python main.py --config tests/tiny_run_config.py:testbed=DIR --workdir W
"""

import ml_collections

from configs import common, demo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, source="tests/tiny_run_config.py", testbed="", mesh="1x-1x1")
    c = demo.get_config()
    c.mode = "grpo"
    c.seed = 3
    c.total_steps = 4
    c.tokenizer_dir = f"{arg.testbed}/tokenizer"
    c.data.train_files = (f"{arg.testbed}/train.jsonl",)
    c.model.overrides.update(embed_dim=32, mlp_dim=64, num_layers=2, num_heads=2,
                             num_kv_heads=1, head_dim=16)
    c.mesh.shape = tuple(int(x) for x in arg.mesh.split("x"))
    c.sampling.max_new_tokens = 24
    c.sampling.batch_size = 8
    c.dtr.exit_margin = 2
    c.dtr.probe_budget = 6
    c.dtr.max_probes = 2
    c.grpo.group_size = 2
    c.grpo.prompts_per_step = 4
    c.grpo.num_minibatches = 2
    c.grpo.chunk_size = 32
    c.optim.learning_rate = 1e-3
    c.ckpt.every_steps = 2
    c.ckpt.async_save = False
    c.reward.grader_workers = 1
    c.eval.max_new_tokens = 24
    c.eval.batch_size = 8
    c.eval.max_problems = 8
    return c

"""HF directory (Qwen3, Qwen2 or Llama) -> checkpoint of ours (Orbax params + model config), as
step 0.

  python tools/import_hf.py --hf_dir /path/Qwen3-8B --out /ckpt/qwen3-8b [--dtype bfloat16]
"""

import jax
from absl import app, flags

from stepgrpo_jax import checkpoint, hf, logs

HF_DIR = flags.DEFINE_string("hf_dir", None, "HF model directory.", required=True)
OUT = flags.DEFINE_string("out", None, "Checkpoint directory to create.", required=True)
DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"],
                          "Store the params in this dtype (default: as in the HF files).")
STEP = flags.DEFINE_integer("step", 0, "Step number to save the params under.")


def main(argv):
    del argv
    logs.quiet_logs()
    cfg, params = hf.load_pretrained(HF_DIR.value, dtype=DTYPE.value)
    ckpt = checkpoint.Checkpoints(OUT.value, max_to_keep=None, async_save=False)
    ckpt.save(STEP.value, params, {"step": STEP.value,
                                   "model_config": checkpoint.config_to_json(cfg)})
    ckpt.wait()
    ckpt.close()
    print(f"wrote {OUT.value}/{STEP.value} ({cfg.param_dtype}, "
          f"{sum(p.size for p in jax.tree.leaves(params)):,} parameters)")


if __name__ == "__main__":
    app.run(main)

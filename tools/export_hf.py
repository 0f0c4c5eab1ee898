"""Checkpoint of ours (any step) -> HF directory of its family (Qwen3, Qwen2, Llama) that
transformers loads.

  python tools/export_hf.py --checkpoint WORKDIR/checkpoints [--step N] --out DIR \
      [--tokenizer_dir T] [--dtype bfloat16] [--shard_gb 2]
"""

from absl import app, flags

from stepgrpo_jax import checkpoint, hf, logs

CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Checkpoint directory.", required=True)
STEP = flags.DEFINE_integer("step", None, "Step to export (default: the latest).")
OUT = flags.DEFINE_string("out", None, "HF directory to write.", required=True)
TOKENIZER_DIR = flags.DEFINE_string("tokenizer_dir", None, "Copy tokenizer files from here.")
DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"],
                          "Weight dtype of the export (default: as stored).")
SHARD_GB = flags.DEFINE_float("shard_gb", 2.0, "Maximum size of one safetensors file, in GiB.")


def main(argv):
    del argv
    logs.quiet_logs()
    if not checkpoint.is_checkpoint_dir(CHECKPOINT.value):
        raise app.UsageError(f"--checkpoint {CHECKPOINT.value}: not a checkpoint directory "
                             "(expected step folders written by this project)")
    cfg, params = checkpoint.load_model(CHECKPOINT.value, step=STEP.value)
    hf.save_pretrained(cfg, params, OUT.value, tokenizer_dir=TOKENIZER_DIR.value,
                       dtype=DTYPE.value, max_shard_bytes=int(SHARD_GB.value * 1024**3))
    print(f"wrote {OUT.value}")


if __name__ == "__main__":
    app.run(main)

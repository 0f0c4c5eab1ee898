"""GGUF file -> HF model directory (dequantized safetensors, config.json, tokenizer), through
transformers; `tools/import_hf.py` then reads the directory like any other.

  python tools/import_gguf.py --gguf FILE --out DIR [--dtype float32]
  python tools/import_hf.py --hf_dir DIR --out CKPT

The weights are dequantized from the GGUF's 4-8-bit blocks, so the model is exactly as good as
the GGUF, not as the model it was quantized from. Needs the `gguf` and `accelerate` packages.
"""

from absl import app, flags

from stepgrpo_jax import hf, logs

GGUF = flags.DEFINE_string("gguf", None, "GGUF file to convert.", required=True)
OUT = flags.DEFINE_string("out", None, "HF directory to write.", required=True)
DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                          "Weight dtype of the directory (float32 holds the dequantized "
                          "values exactly).")


def main(argv):
    del argv
    logs.quiet_logs()
    try:
        out = hf.gguf_to_hf_dir(GGUF.value, OUT.value, DTYPE.value)
        cfg = hf.read_config(out)
    except ValueError as e:  # CheckpointError, UnsupportedModelError: the message names it.
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {out} ({cfg.family}, {cfg.num_layers} layers, vocab {cfg.vocab_size}, "
          f"{DTYPE.value})")


if __name__ == "__main__":
    app.run(main)

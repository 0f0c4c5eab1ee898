"""Our decoder and sampler against transformers on one real model, all in float32: greedy
completions of 8 chat prompts token for token, and the logits of every prompt + completion.

  python tools/hf_parity.py --gguf FILE [--max_new_tokens 64] [--json OUT]
  python tools/hf_parity.py --hf_dir DIR [...]

A GGUF is converted (as by `tools/import_gguf.py`) into a temporary directory first. Prompts
are formatted by the model's own chat template; both sides stop at the same ids
(`tokenizer.stop_ids`: `<|im_end|>`, the tokenizer's EOS and generation_config's). Prints the
figures; `--json` also writes them.
"""

import json
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from absl import app, flags
from transformers import AutoModelForCausalLM

from stepgrpo_jax import hf, logs, model, sampling, tokenizer

GGUF = flags.DEFINE_string("gguf", None, "GGUF file of the model.")
HF_DIR = flags.DEFINE_string("hf_dir", None, "HF directory of the model (instead of --gguf).")
MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 64, "Greedy completion budget.")
JSON = flags.DEFINE_string("json", None, "Write the figures here.")

PROMPTS = (
    "What is 17 * 23? Answer with the number only.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
    "in May. How many clips did Natalia sell altogether in April and May?",
    "Write a Python function that returns the n-th Fibonacci number.",
    "Explain in one sentence why the sky is blue.",
    "Translate 'Good morning, how are you?' into French.",
    "List three prime numbers greater than 50.",
    "If a train travels 60 km in 45 minutes, what is its average speed in km/h?",
    "Give me a haiku about autumn leaves.",
)


def compare(model_dir: str, max_new_tokens: int) -> dict:
    tok = tokenizer.load(model_dir)
    cfg, params = hf.load_pretrained(model_dir, dtype=jnp.float32)
    hf_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    stops = tokenizer.stop_ids(tok, model_dir)
    pad = tok.pad_token_id if tok.pad_token_id is not None else stops[0]
    prompts = [tok.encode(tokenizer.chat_prompt(p, tok), add_special_tokens=False)
               for p in PROMPTS]

    t0 = time.perf_counter()
    scfg = sampling.SamplerConfig(
        max_new_tokens=max_new_tokens, prompt_buckets=(max(map(len, prompts)),),
        temperature=0.0, cache_dtype="float32", eos_ids=stops, think_end_id=-1, pad_id=pad)
    tables = sampling.TriggerTables.from_tokenizer(tok, ("Wait",), cfg.vocab_size)
    out = sampling.Sampler(cfg, scfg, tables)(params, prompts, jax.random.key(0))
    ours = [out.completion(row) for row in range(len(prompts))]
    t1 = time.perf_counter()
    theirs = []
    with torch.no_grad():
        for ids in prompts:
            ref = hf_model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens,
                                    do_sample=False, eos_token_id=list(stops), pad_token_id=pad)
            theirs.append(ref[0, len(ids):].tolist())
    t2 = time.perf_counter()

    # Logits of each prompt + transformers' completion, one row at a time (one length: one
    # compile), compared on the real tokens.
    seqs = [p + c for p, c in zip(prompts, theirs, strict=True)]
    length = max(map(len, seqs))
    forward = jax.jit(model.forward, static_argnums=0)
    max_diff, positions, argmax_agree = 0.0, 0, 0
    for seq in seqs:
        ids = np.full((1, length), pad, np.int32)
        ids[0, :len(seq)] = seq
        mask = np.arange(length)[None] < len(seq)
        mine = np.asarray(forward(cfg, params, ids, mask))[0, :len(seq)]
        with torch.no_grad():
            ref = hf_model(torch.tensor([seq])).logits[0].numpy()
        max_diff = max(max_diff, float(np.abs(mine - ref).max()))
        positions += len(seq)
        argmax_agree += int((mine.argmax(-1) == ref.argmax(-1)).sum())
    rows = [{"prompt": p, "ours": tok.decode(a), "equal": a == b, "ours_tokens": len(a),
             "theirs_tokens": len(b)} for p, a, b in zip(PROMPTS, ours, theirs, strict=True)]
    return {
        "model_dir": model_dir, "family": cfg.family, "num_params": model.num_params(cfg),
        "stop_ids": list(stops), "max_new_tokens": max_new_tokens,
        "completions_equal": sum(r["equal"] for r in rows), "num_prompts": len(rows),
        "logits_max_abs_diff": max_diff, "logit_positions": positions,
        "argmax_agree": argmax_agree,
        "seconds": {"ours_sampler": round(t1 - t0, 1), "transformers_generate": round(t2 - t1, 1)},
        "rows": rows,
    }


def main(argv):
    del argv
    logs.quiet_logs()
    if (GGUF.value is None) == (HF_DIR.value is None):
        raise app.UsageError("give exactly one of --gguf and --hf_dir")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            model_dir = HF_DIR.value or hf.gguf_to_hf_dir(GGUF.value, tmp)
            result = compare(model_dir, MAX_NEW_TOKENS.value)
        except ValueError as e:  # Bad input (file, config, tensors): the message names it.
            raise SystemExit(f"error: {e}") from None
    for r in result["rows"]:
        print(f"{'same' if r['equal'] else 'DIFFERENT'} ({r['ours_tokens']} / "
              f"{r['theirs_tokens']} tokens): {r['prompt'][:50]!r} -> {r['ours'][:60]!r}")
    print(f"{result['family']}, {result['num_params']:,} params: greedy completions equal on "
          f"{result['completions_equal']}/{result['num_prompts']} prompts; logits max |diff| "
          f"{result['logits_max_abs_diff']:.3g} over {result['logit_positions']} positions "
          f"(argmax equal on {result['argmax_agree']}); seconds {result['seconds']}")
    if JSON.value:
        with open(JSON.value, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    app.run(main)

r"""Samples completions of one prompt with the compiled sampler; prints them, optionally as JSON.

  python tools/generate.py --model_dir /path/to/Qwen3-0.6B --prompt "What is 2+3?" \
      --num_samples 4 --max_new_tokens 512 --temperature 0.6 --top_p 0.95 --top_k 20 --dtr

`--engine continuous` (default) runs the samples on a pool of `--rows` decode rows (default: one
per sample), refilled as samples finish; `--engine static` decodes all samples as one batch. Both
give the same completions for the same `--seed`.

`--model_dir` is an HF directory (Qwen3, Qwen2 or Llama) or a checkpoint directory of ours;
the tokenizer comes from `--tokenizer_dir` (default: the model directory). A text prompt goes
through the tokenizer's chat template (Qwen3's layout if it has none) unless `--raw`;
`--prompt_ids` are used as they are.
`--temperature 0` is greedy; `--top_k 0` and `--top_p 1` switch those filters off.
JSON (`--json OUT`):
{"prompt_ids": [...], "completions": [{"token_ids", "text", "logprobs", "step_count",
"num_probes", "exit_reason"}, ...]}, token_ids being the completion only.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp

from stepgrpo_jax import checkpoint, sampling, tokenizer


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--tokenizer_dir", help="default: --model_dir")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="user text (chat template applied unless --raw)")
    prompt.add_argument("--prompt_ids", help="comma-separated token ids, used as they are")
    parser.add_argument("--raw", action="store_true", help="do not apply the chat template")
    parser.add_argument("--num_samples", type=int, default=1)
    parser.add_argument("--engine", choices=["continuous", "static"], default="continuous")
    parser.add_argument("--rows", type=int, help="continuous: decode rows (default: num_samples)")
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    parser.add_argument("--top_p", type=float, default=1.0, help="1: off")
    parser.add_argument("--top_k", type=int, default=0, help="0: off")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtr", action="store_true", help="Dynamic Truncated Rollout (SPEC §3)")
    parser.add_argument("--dtr_threshold", type=float, default=0.95)
    parser.add_argument("--triggers", default="Wait", help="comma-separated step trigger words")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16",
                        help="params, compute and KV cache")
    parser.add_argument("--json", help="write the completions here")
    args = parser.parse_args(argv)
    args.rows = args.rows or args.num_samples
    if min(args.num_samples, args.max_new_tokens, args.rows) < 1:
        parser.error("--num_samples, --max_new_tokens and --rows must be at least 1")
    if args.prompt_ids is not None:
        try:
            args.prompt_ids = [int(i) for i in args.prompt_ids.split(",")]
        except ValueError:
            parser.error(f"--prompt_ids={args.prompt_ids!r}: expected integers like 1,2,3")
    return args


def prompt_ids(args: argparse.Namespace, tok, vocab_size: int) -> list[int]:
    if args.prompt_ids is not None:
        ids = args.prompt_ids
    else:
        text = args.prompt if args.raw else tokenizer.chat_prompt(args.prompt, tok)
        ids = tok.encode(text, add_special_tokens=False)
    if not ids:
        raise ValueError("the prompt has no tokens")
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"prompt ids {bad[:5]} are outside the model's vocabulary "
                         f"[0, {vocab_size})")
    return ids


def sampler_config(args: argparse.Namespace, tok, prompt_len: int) -> sampling.SamplerConfig:
    think_end = tok.convert_tokens_to_ids("</think>")
    think_end = None if think_end == tok.unk_token_id else think_end
    if args.dtr and think_end is None:
        raise ValueError("--dtr needs a tokenizer with a </think> token")
    return sampling.SamplerConfig(
        max_new_tokens=args.max_new_tokens,
        prompt_buckets=(max(16, 1 << (prompt_len - 1).bit_length()),),
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        cache_dtype=args.dtype, eos_ids=tokenizer.stop_ids(tok, args.model_dir),
        think_end_id=-1 if think_end is None else think_end,
        pad_id=tok.pad_token_id or 0,
        dtr=(sampling.DTRConfig.from_tokenizer(tok, threshold=args.dtr_threshold)
             if args.dtr else None))


def main(argv=None) -> dict:
    args = parse_args(argv)
    tok = tokenizer.load(args.tokenizer_dir or args.model_dir)
    cfg, params = checkpoint.load_model(args.model_dir, dtype=jnp.dtype(args.dtype))
    ids = prompt_ids(args, tok, cfg.vocab_size)
    scfg = sampler_config(args, tok, len(ids))
    tables = sampling.TriggerTables.from_tokenizer(tok, args.triggers.split(","),
                                                   cfg.vocab_size)
    rng = jax.random.key(args.seed)
    if args.engine == "continuous":
        engine = sampling.Engine(cfg, scfg, tables, num_rows=args.rows)
        out = engine.rollout(params, [ids], args.num_samples, rng)
    else:
        out = sampling.Sampler(cfg, scfg, tables)(params, [ids] * args.num_samples, rng)
    completions = []
    for row in range(args.num_samples):
        n = int(out.lengths[row])
        completions.append({
            "token_ids": out.completion(row),
            "text": tok.decode(out.completion(row), skip_special_tokens=False),
            "logprobs": out.logprobs[row, :n].tolist(),
            "step_count": int(out.step_counts[row]),
            "num_probes": int(out.num_probes[row]),
            "exit_reason": out.exit_reason(row),
        })
        print(f"--- sample {row}: {n} tokens, {completions[-1]['step_count']} steps, "
              f"{completions[-1]['num_probes']} probes, exit {completions[-1]['exit_reason']}")
        print(completions[-1]["text"])
    result = {"prompt_ids": ids, "completions": completions}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as e:  # Bad input: say what, without a traceback.
        sys.exit(f"error: {e}")

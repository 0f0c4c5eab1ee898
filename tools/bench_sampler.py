r"""Sampler throughput: ours against transformers `generate`, and DTR on against off.

Both samplers get the same random weights, prompts, batch and lengths, and draw from the whole
vocabulary at temperature 1 with no EOS, so every row generates exactly --new_tokens tokens. Each
is run once to warm up (compile), then the best of --repeats timed calls counts. DTR on vs off
compares our sampler's time per generated token at that equal output length; with random weights
a trigger word is rare, so it measures the state machine's own cost (the probes that did run are
printed).

Presets: `cpu` (default; about a minute on 2 cores) and the Qwen3-0.6B / 1.7B shapes for GPUs,
which also print the memory roofline: the params plus the average KV cache read once per step,
over --bandwidth_gbs.

  python tools/bench_sampler.py
  python tools/bench_sampler.py --preset qwen3-1.7b --bandwidth_gbs 3350 --skip_hf

`--model_dir` (an HF directory of any supported family, or a checkpoint of ours) times a real
model, with its own tokenizer, instead of the preset's random weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from stepgrpo_jax import checkpoint, hf, model, sampling, tokenizer

PRESETS = {
    # A small model with Qwen3's real vocabulary (its LM head dominates the step at this size).
    "cpu": dict(shape=dict(embed_dim=256, mlp_dim=512, num_layers=4, num_heads=8,
                           num_kv_heads=4, head_dim=32, tie_word_embeddings=True),
                batch=16, prompt_len=64, new_tokens=128, dtype="float32", bandwidth_gbs=20.0),
    "qwen3-0.6b": dict(shape="qwen3-0.6b", batch=256, prompt_len=128, new_tokens=512,
                       dtype="bfloat16", bandwidth_gbs=3350.0),
    "qwen3-1.7b": dict(shape="qwen3-1.7b", batch=256, prompt_len=128, new_tokens=512,
                       dtype="bfloat16", bandwidth_gbs=3350.0),
}


def model_config(preset: dict, dtype: str) -> model.ModelConfig:
    shape = preset["shape"]
    cfg = model.preset(shape) if isinstance(shape, str) else model.ModelConfig(**shape)
    return cfg.replace(dtype=dtype, param_dtype=dtype)


def best_times(fns, repeats: int) -> list[float]:
    """Seconds of each function: one warm-up call each (compiles ours, allocates both), then the
    fastest of `repeats` timed calls, taken in turns so that a busy moment of a shared machine
    falls on one call of each rather than on all calls of one."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def hf_runner(cfg, params, prompts, new_tokens: int):
    """A function that runs transformers `generate` on our params, and its torch thread count."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = getattr(torch, cfg.param_dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf_model = AutoModelForCausalLM.from_config(
        AutoConfig.for_model(**model.to_hf_config(cfg, cfg.param_dtype)))
    state = {k: torch.tensor(np.asarray(v, np.float32))
             for k, v in hf.to_hf_tensors(cfg, params).items()}
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    hf_model = hf_model.to(device=device, dtype=dtype).eval()
    ids = torch.tensor(prompts, device=device)

    def run(tokens: int = new_tokens):
        with torch.inference_mode():
            out = hf_model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=tokens,
                min_new_tokens=tokens, eos_token_id=cfg.vocab_size - 1, pad_token_id=0)
        if device == "cuda":
            torch.cuda.synchronize()
        assert out.shape[1] == ids.shape[1] + tokens

    # On a CPU shared with other work, OpenMP threads that spin while waiting for a core can make
    # torch several times slower than with one thread: give it whichever count is faster.
    threads = torch.get_num_threads()
    if device == "cpu":
        def seconds_with(n):
            torch.set_num_threads(n)
            return best_times([lambda: run(8)], 1)[0]

        threads = min({1, os.cpu_count()}, key=seconds_with)
        torch.set_num_threads(threads)
    return run, threads


def roofline_tokens_per_s(cfg, batch: int, prompt_len: int, new_tokens: int,
                          bandwidth_gbs: float) -> float:
    """Tokens/s if a decode step only read the params and each row's valid KV cache once."""
    itemsize = jnp.dtype(cfg.param_dtype).itemsize
    kv_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * itemsize
    step_bytes = (model.num_params(cfg) * itemsize
                  + batch * (prompt_len + new_tokens / 2) * kv_per_token)
    return batch / (step_bytes / (bandwidth_gbs * 1e9))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--model_dir", help="a real model instead of the preset's shape")
    parser.add_argument("--batch", type=int, help="overrides the preset")
    parser.add_argument("--prompt_len", type=int, help="overrides the preset")
    parser.add_argument("--new_tokens", type=int, help="overrides the preset")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], help="overrides the preset")
    parser.add_argument("--bandwidth_gbs", type=float, help="memory bandwidth for the roofline")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls; the best counts")
    parser.add_argument("--skip_hf", action="store_true", help="time our sampler only")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    batch, prompt_len, new_tokens, dtype, bandwidth = (
        getattr(args, k) or preset[k]
        for k in ("batch", "prompt_len", "new_tokens", "dtype", "bandwidth_gbs"))

    if args.model_dir:
        cfg, params = checkpoint.load_model(args.model_dir, dtype=dtype)
        cfg = cfg.replace(dtype=dtype)
        tok = tokenizer.load(args.model_dir)
    else:
        cfg = model_config(preset, dtype)
        params = jax.jit(model.init_params, static_argnums=0)(cfg, jax.random.key(0))
        tok = tokenizer.load(tokenizer.cached_qwen3_tokenizer())
    prompts = np.random.default_rng(0).integers(1, cfg.vocab_size, (batch, prompt_len)).tolist()
    tables = sampling.TriggerTables.from_tokenizer(tok, ("Wait",), cfg.vocab_size)
    plain = sampling.SamplerConfig(max_new_tokens=new_tokens, prompt_buckets=(prompt_len,),
                                   temperature=1.0, eos_ids=(), cache_dtype=dtype)
    with_dtr = dataclasses.replace(plain, dtr=sampling.DTRConfig.from_tokenizer(tok))

    samplers = [sampling.Sampler(cfg, scfg, tables) for scfg in (plain, with_dtr)]
    outputs = [None, None]

    def ours(i):
        outputs[i] = samplers[i](params, prompts, jax.random.key(1))

    runners = [lambda: ours(0), lambda: ours(1)]
    if not args.skip_hf:
        import transformers

        hf_run, threads = hf_runner(cfg, params, prompts, new_tokens)
        runners.append(hf_run)
    seconds = best_times(runners, args.repeats)
    ours_s, dtr_s = seconds[:2]
    assert (outputs[1].lengths == new_tokens).all()
    generated = batch * new_tokens
    result = {
        "preset": args.preset, "model_dir": args.model_dir, "batch": batch,
        "prompt_len": prompt_len, "new_tokens": new_tokens, "dtype": dtype,
        "params": model.num_params(cfg),
        "device": str(jax.devices()[0].device_kind), "machine": platform.machine(),
        "cores": os.cpu_count(), "jax": jax.__version__,
        "ours_tokens_per_s": round(generated / ours_s, 1),
        "dtr_tokens_per_s": round(generated / dtr_s, 1),
        "dtr_over_plain_per_token": round(dtr_s / ours_s, 3),
        "dtr_probes": int(outputs[1].num_probes.sum()), "dtr_iterations": outputs[1].num_steps,
    }
    if not args.skip_hf:
        result.update(hf_tokens_per_s=round(generated / seconds[2], 1), torch_threads=threads,
                      ours_over_hf=round(seconds[2] / ours_s, 2),
                      transformers=transformers.__version__)
    roofline = roofline_tokens_per_s(cfg, batch, prompt_len, new_tokens, bandwidth)
    result.update(bandwidth_gbs=bandwidth, roofline_tokens_per_s=round(roofline, 1),
                  ours_fraction_of_roofline=round(generated / ours_s / roofline, 3))
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

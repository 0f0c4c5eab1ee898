"""The DTR probe's confidence at the first step boundary of the overthinking testbed, split by
difficulty and by whether the first attempt is right: is the probe calibrated?

For every held-out problem and every first attempt X the model gives probability above
--min_prob at temperature 1 (as in training rollouts), the probe runs as SPEC §3.2 says, right
after "The sum is X.\\n": the probe prompt, then greedy decoding up to the probe budget, with
confidence c = the geometric mean of the top-1 probabilities of probe tokens 2.. (0 unless the
probe closes thinking). Rows are weighted by P(X), so each difficulty's shares are those of
rollouts. A calibrated probe is confident after right first attempts and not after wrong ones;
one that copies X is confident after both.

  python tools/probe_confidence.py --model /tmp/bench/sft/more/checkpoints \\
      --testbed /tmp/bench/testbed [--threshold 0.95]
"""

import json
import os
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stepgrpo_jax import checkpoint, logs, tokenizer  # noqa: E402
from stepgrpo_jax.sampling.config import DTRConfig  # noqa: E402

MODEL = flags.DEFINE_string("model", None, "Model or checkpoint directory.", required=True)
TESTBED = flags.DEFINE_string("testbed", None, "Testbed directory (tokenizer/, eval.jsonl).",
                              required=True)
THRESHOLD = flags.DEFINE_float("threshold", DTRConfig.threshold, "DTR threshold δ.")
MIN_PROB = flags.DEFINE_float("min_prob", 0.005, "First attempts below this are left out.")
BINS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 1.0)


def summarize(rows: list[dict], threshold: float, bins: tuple[float, ...] = BINS) -> dict:
    """Per difficulty and first attempt right/wrong: the rollouts' share of that difficulty
    (`share`), the share above `threshold` (`exits`), the mean confidence and its histogram
    over `bins` (the last bin includes 1). Rows: `difficulty`, `right`, `weight` (P(X)),
    `confidence` in [0, 1]."""
    out = {}
    for d in sorted({r["difficulty"] for r in rows}):
        at_d = [r for r in rows if r["difficulty"] == d]
        total = sum(r["weight"] for r in at_d)
        for right in (True, False):
            rs = [r for r in at_d if r["right"] == right]
            mass = sum(r["weight"] for r in rs)
            if not mass:
                continue
            c = np.array([r["confidence"] for r in rs])
            w = np.array([r["weight"] for r in rs]) / mass
            edges = np.array(bins[:-1] + (bins[-1] + 1e-9,))
            out[f"d={d} {'right' if right else 'wrong'}"] = {
                "share": mass / total, "exits": float(w[c > threshold].sum()),
                "confidence_mean": float(w @ c),
                "histogram": np.histogram(c, edges, weights=w)[0].tolist()}
    return out


def format_table(summary: dict, threshold: float, bins: tuple[float, ...] = BINS) -> str:
    head = " | ".join(f"{a:g}-{b:g}" for a, b in zip(bins[:-1], bins[1:], strict=True))
    lines = [f"| first attempt | share | exits at δ={threshold:g} | mean c | {head} |",
             "|---|---|---|---|" + "---|" * (len(bins) - 1)]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['share']:.0%} | {s['exits']:.0%} | "
                     f"{s['confidence_mean']:.3f} | "
                     + " | ".join(f"{h:.0%}" for h in s["histogram"]) + " |")
    return "\n".join(lines)


def probe_rows(model_dir: str, testbed_dir: str, min_prob: float) -> list[dict]:
    """One row per (held-out problem, first attempt X with P(X) >= min_prob)."""
    import jax
    import jax.numpy as jnp

    from stepgrpo_jax.model import qwen3

    tok = tokenizer.load(os.path.join(testbed_dir, "tokenizer"))
    cfg, params = checkpoint.load_model(model_dir)
    dtr = DTRConfig.from_tokenizer(tok)
    end_id = tok.convert_tokens_to_ids("</think>")
    with open(os.path.join(testbed_dir, "eval.jsonl")) as f:
        problems = [json.loads(line) for line in f]

    def encode(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False)

    @jax.jit
    def next_logprobs(ids, lengths):  # [N, L] right-padded -> [N, V] after each row's end.
        mask = jnp.arange(ids.shape[1]) < lengths[:, None]
        logits = qwen3.forward(cfg, params, ids, mask)
        return jax.nn.log_softmax(jnp.take_along_axis(
            logits, (lengths - 1)[:, None, None], axis=1)[:, 0])

    def batched(seqs: list[list[int]], length: int, batch: int = 128):
        ids = np.full((len(seqs), length), tok.pad_token_id, np.int32)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = s
        lengths = np.array([len(s) for s in seqs], np.int32)
        return ids, lengths, lambda: np.concatenate([
            np.asarray(next_logprobs(jnp.asarray(ids[i:i + batch]),
                                     jnp.asarray(lengths[i:i + batch])))
            for i in range(0, len(seqs), batch)])

    heads = [encode(tokenizer.problem_prompt(p["problem"]) + "<think>\nThe sum is ")
             for p in problems]
    _, _, run = batched(heads, max(map(len, heads)))
    first = np.exp(run())
    rows, seqs = [], []
    for i, p in enumerate(problems):
        for t in np.flatnonzero(first[i] >= min_prob):
            x = tok.decode([int(t)])
            if x.isdigit():
                rows.append({"difficulty": p["difficulty"], "right": x == p["answer"],
                             "weight": float(first[i, t])})
                seqs.append(encode(tokenizer.problem_prompt(p["problem"])
                                   + f"<think>\nThe sum is {x}.\n") + list(dtr.probe_ids))
    # The probe: greedy decoding, written in place into right-padded rows.
    ids, lengths, run = batched(seqs, max(map(len, seqs)) + dtr.probe_budget)
    top = np.zeros((len(seqs), dtr.probe_budget))
    closed = np.zeros(len(seqs), np.int32)  # 1-based index of the `</think>` token, 0: none.
    for t in range(1, dtr.probe_budget + 1):
        logprobs = run()
        greedy = logprobs.argmax(-1)
        top[:, t - 1] = logprobs.max(-1)
        closed = np.where((closed == 0) & (greedy == end_id), t, closed)
        ids[np.arange(len(seqs)), lengths] = greedy
        lengths += 1
        if closed.all():
            break
    for r, k, lp in zip(rows, closed, top, strict=True):
        r["confidence"] = float(np.exp(lp[1:k].mean())) if k >= 2 else 0.0
    return rows


def main(argv):
    del argv
    logs.quiet_logs()
    rows = probe_rows(MODEL.value, TESTBED.value, MIN_PROB.value)
    print(format_table(summarize(rows, THRESHOLD.value), THRESHOLD.value))


if __name__ == "__main__":
    app.run(main)

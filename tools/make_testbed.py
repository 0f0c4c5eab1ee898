"""Writes the overthinking testbed (tokenizer, GRPO/eval problems, SFT traces) and its stats.

  python tools/make_testbed.py --out /tmp/testbed [--seed 0] [--train 1500] [--eval 300] \
      [--sft 6000]
"""

import json

from absl import app, flags

from stepgrpo_jax import logs, testbed, tokenizer

OUT = flags.DEFINE_string("out", None, "Directory to write the testbed into.", required=True)
SEED = flags.DEFINE_integer("seed", 0, "Seed of problems, traces and tokenizer.")
TRAIN = flags.DEFINE_integer("train", 1500, "GRPO training problems.")
EVAL = flags.DEFINE_integer("eval", 300, "Held-out evaluation problems (distinct).")
SFT = flags.DEFINE_integer("sft", 6000, "Warm-start rows (problem + teacher response).")
DIFFICULTIES = flags.DEFINE_list("difficulties", ["1", "2", "3"],
                                  "Difficulties to mix (d + 2 terms).")


def main(argv):
    del argv
    logs.quiet_logs()
    paths = testbed.prepare(OUT.value, SEED.value, TRAIN.value, EVAL.value, SFT.value,
                            [int(d) for d in DIFFICULTIES.value])
    tok = tokenizer.load(paths["tokenizer"])
    with open(paths["sft"], encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    print(json.dumps({"paths": paths, "vocab_size": len(tok),
                      "sft_stats": testbed.summarize(rows, tok)}, indent=2))


if __name__ == "__main__":
    app.run(main)

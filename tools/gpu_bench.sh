#!/usr/bin/env bash
# GPU benchmarks in one device call (docs/benchmarks.md records the results):
#   our sampler vs transformers generate and the Tunix sampler (1.7B and 0.6B shapes),
#   DTR on/off, the rollout engine vs the static sampler on heavy-tailed lengths, one decode
#   step at 10% and 90% cache fill, the GRPO update's MFU, the bf16 parity tests, and the
#   memory plan of configs/step_grpo.py's gpu8 setups as XLA:GPU compiles it (docs/scale.md).
# Wheels the device image lacks travel in .whl/ (see the device README); tunix goes there too.
#   bash tools/gpu_bench.sh [PEER_BENCH_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
peers=${1:-../shared/peer-bench}
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
out=${OUT:-/tmp/gpu_bench}; mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for shape in qwen3-1.7b qwen3-0.6b; do
  python3 tools/bench_sampler.py --preset "$shape" --json "$out/ours_$shape.json" \
    | tee "$out/ours_$shape.txt"
  [ -f "$peers/tunix_sampler.py" ] && python3 "$peers/tunix_sampler.py" --shape "$shape" \
    --batch 256 --prompt_len 128 --new_tokens 512 --dtype bfloat16 | tee "$out/tunix_$shape.json"
done
python3 tools/bench_rollout.py --budget 2048 --prompts 512 --group_size 4 --rows 256 \
  --json "$out/rollout.json" | tee "$out/rollout.txt"
python3 tools/bench_decode_fill.py --batch 64 --slots 32768 --block 512 \
  --json "$out/decode_fill.json" | tee "$out/decode_fill.txt"
python3 tools/bench_train.py --preset qwen3-1.7b --batch 16 --seq 2048 --dtype bfloat16 \
  --microbatches 4 | tee "$out/train.txt"
python3 -m pytest -q tests/model_test.py tests/sampling_test.py tests/engine_test.py 2>&1 | tail -n 5 | tee "$out/tests.txt"
# The gpu8 setups' three programs compiled by XLA:GPU for 8 GPUs (tools/aot_compile.py --topology
# local): a setup that does not fit prints DOES NOT FIT. With fewer than 8 GPUs, JAX's mock
# topology shows the compiler 8 devices on one host (compile only; nothing runs). JAX may use
# XLA_PYTHON_CLIENT_MEM_FRACTION of a GPU (0.9 here, 0.75 by default): the plan's 10% headroom.
mock=(); [ "$(nvidia-smi -L | wc -l)" -lt 8 ] && mock=(JAX_MOCK_GPU_TOPOLOGY=1x1x8 JAX_CUDA_VISIBLE_DEVICES=0)
for size in 1.7b 4b 8b; do
  env "${mock[@]}" JAX_PLATFORMS=cuda python3 tools/aot_compile.py --topology local \
    --config "configs/step_grpo.py:size=$size,platform=gpu8" --json "$out/aot_gpu8_$size.json" \
    | tee "$out/aot_gpu8_$size.txt"
done

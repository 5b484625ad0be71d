#!/usr/bin/env bash
# The GPU check of issue 15, one prepared run (< 8 minutes on one H200): the `cuda` tests with the
# sync debug mode on, then benchmarks/gpu.py, which writes benchmarks/results/gpu.md. Self-contained:
# the GPU image has torch, numpy, pyarrow, PyYAML, typer, rich, safetensors, onnx, onnxruntime and
# pytest, but no pydantic; its wheels travel in .whl/ (fetched here first, on a machine with pip):
#
#   benchmarks/gpu_check.sh --fetch-wheels          # here, once: pydantic and its needs into .whl/
#                                                   (PIP_PY=/path/to/python with pip; tried here: the 4 wheels download)
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=540)   # on the GPU machine
#
# Results land in benchmarks/results/gpu.md and, on the device tool, under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--fetch-wheels" ]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> "$(git rev-parse --git-common-dir)/info/exclude"
    ${PIP_PY:-python3} -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
    exit $?
fi
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if ! $PY -c "import pydantic" 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || {
        echo "gpu_check: pydantic is missing and .whl/ holds no wheels (run benchmarks/gpu_check.sh --fetch-wheels first)"; exit 2; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}
export CUBLAS_WORKSPACE_CONFIG=:4096:8   # deterministic cuBLAS for the bit-identical resume test
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" | tee -a "$OUT/gpu.txt"
# 1. correctness on the real device (about 2 minutes): the GPU path, and the data on the device
#    (device-resident and pinned-staging batches against the CPU's, staged = resident training)
timeout 240 $PY -m pytest tests/test_gpu.py tests/test_gpu_data.py -q -p no:cacheprovider 2>&1 | tail -30 | tee "$OUT/cuda_tests.txt"
tests=${PIPESTATUS[0]}
# 2. speed (about 4 minutes); 250k rows keeps each of the 48 measurements (hand loops, distill with
#    the split on the device and with pinned staging) a few seconds
timeout 300 $PY -m benchmarks.gpu --rows 250000 --steps 60 --out benchmarks/results/gpu.md 2>&1 | tail -40 | tee "$OUT/bench.txt"
bench=${PIPESTATUS[0]}
cp benchmarks/results/gpu.md "$OUT/" 2>/dev/null
echo "gpu_check: tests exit $tests, benchmark exit $bench"
[ "$tests" = 0 ] && [ "$bench" = 0 ]

#!/usr/bin/env bash
# Download, on a machine with network, the wheels the GPU machine lacks into .whl/ (git ignores it), so that
# `benchmarks/gpu_suite.py` can run there offline. The GPU machine has Python 3.12, torch 2.11, transformers,
# accelerate, safetensors and peft; it lacks diffusers, importlib_metadata (diffusers needs it), torchao (FP8 modes)
# and sageattention (the "sage" attention mode; a pure-Python wheel whose kernels are Triton's). It also lacks PyAV,
# which the suite does not need (it encodes no video): left out, it keeps the carried tree (64 MiB at most) small.
#
#     bash benchmarks/gather_gpu_wheels.sh            # here, from the repository root
#
# Then, on the GPU machine, from the repository root (the one-line command of docs/performance.md):
#
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#         .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src && python3 benchmarks/gpu_suite.py
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(
  diffusers==0.42.1
  importlib_metadata==8.7.0
  zipp==3.23.0
  torchao==0.18.0
  sageattention==1.0.6
)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)
mkdir -p .whl
for wheel in "${WHEELS[@]}"; do
  name=${wheel%%==*}
  if ls .whl/"${name//-/_}"-"${wheel##*==}"-*.whl >/dev/null 2>&1; then
    echo "have $wheel"
    continue
  fi
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]/#/--platform=}" -d .whl "$wheel"
  echo "got  $wheel"
done
ls -1 .whl

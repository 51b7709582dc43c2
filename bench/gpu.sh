#!/usr/bin/env bash
# The GPU figures of the benchmark harness in one run, sized for a short device lease (about 6 minutes
# on an H100 / H200): the bf16 matrix-product ceiling, then the production 256 px UNets eager in both
# memory formats, then torch.compile (Inductor) and CUDA graphs ('reduce-overhead'), then the largest
# batch that fits. (The expert filter's benchmark needs the whole stack - MONAI, torchxrayvision, Prefect -
# so it runs on a GPU machine with this project installed: `python -m bench.filtering --device cuda`.)
#
#   bash bench/gpu.sh fetch     here, once: the few wheels a GPU image without this stack lacks -> .whl/
#   bash bench/gpu.sh run       on the GPU machine (carry .whl); results in $OUT (default bench/results)
#
# The GPU machine's own python3 and torch are used (no virtualenv: its torch is the CUDA build that
# matches its driver). bench.sampling imports only torch, diffusers and pydantic of the stack, so
# diffusers + pydantic wheels are all that must travel. Not yet run on a GPU: the first run checks it.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(diffusers==0.42.1 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5)

case "${1:-run}" in
fetch)
  python3 -m pip download --only-binary=:all: --no-deps --python-version 3.12 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}"
  ;;
run)
  out=${OUT:-bench/results}
  python3 -c "import diffusers, pydantic" 2>/dev/null ||
    python3 -m pip install -q --no-index --no-deps --find-links .whl "${WHEELS[@]}"
  export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$out/gpu-device.txt"
  sampling=(python3 -m bench.sampling --device cuda --architectures production --steps 10 --repeats 3
            --precision bf16 --out "$out/sampling-gpu.json")
  "${sampling[@]}" --batches 64 --channels-last both --compile no
  "${sampling[@]}" --append --models image --batches 64 --channels-last yes --compile default reduce-overhead
  "${sampling[@]}" --append --models image --batches auto --channels-last yes --compile no
  ;;
*)
  echo "usage: bash bench/gpu.sh [fetch|run]" >&2
  exit 2
  ;;
esac

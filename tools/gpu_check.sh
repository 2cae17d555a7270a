#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU and no network, in at most 8 minutes:
#
#   tools/gpu_check.sh WHEELS_DIR          install protonet[cuda] from WHEELS_DIR into a fresh venv, verify
#                                          five nets on the GPU, record ResNet-50 throughput at batch 1, 32,
#                                          128 and 256 in fp32 and fp16 into benchmarks/gpu.md
#   tools/gpu_check.sh --dry OUT.md [ARGS] the same Python steps here, on the CPU, from the source tree
#                                          (ARGS go to tools/gpu_check.py, e.g. --net lenet)
#
# WHEELS_DIR is made beforehand on a machine with network and the same Python version and platform:
#   pip wheel -w wheels ".[cuda]"          # protonet's wheel, onnxruntime-gpu and its nvidia-* CUDA/cuDNN wheels
#   pip download -d wheels tensorrt-cu12   # optional: TensorRT (tensorrt-cu13 for onnxruntime-gpu 1.3x); adds
#                                          # a TensorRT row at batch 32
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
START=$SECONDS
LIMIT=${GPU_CHECK_SECONDS:-480}

if [ "${1:-}" = "--dry" ]; then
    OUT=${2:?usage: tools/gpu_check.sh --dry OUT.md [ARGS]}
    shift 2
    PYTHONPATH="$ROOT" exec timeout "$LIMIT" python3 "$ROOT/tools/gpu_check.py" --provider cpu --dry --out "$OUT" \
        --verify-nets lenet,squeezenet1_1 --net squeezenet1_1 --batches 1,2 --seconds 0.2 --budget 240 "$@"
fi

WHEELS=$(cd "${1:?usage: tools/gpu_check.sh WHEELS_DIR | --dry OUT.md}" && pwd)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || {
    echo "gpu_check: nvidia-smi failed: no NVIDIA GPU or driver here" >&2; exit 2; }
VENV=$(mktemp -d /tmp/protonet-gpu.XXXXXX)
python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
timeout 240 pip install --quiet --no-index --find-links "$WHEELS" "protonet[cuda]"
EXTRA=()
if compgen -G "$WHEELS/tensorrt*.whl" >/dev/null; then
    timeout 120 pip install --quiet --no-index --find-links "$WHEELS" "$WHEELS"/tensorrt*.whl && EXTRA=(--tensorrt)
fi
python -c "import onnxruntime as o; o.preload_dlls(); o.print_debug_info()" 2>/dev/null || true
cd /tmp  # the installed protonet, not the source tree, is what runs
LEFT=$((LIMIT - (SECONDS - START) - 20))
timeout "$LEFT" python "$ROOT/tools/gpu_check.py" --provider cuda --out "$ROOT/benchmarks/gpu.md" \
    --budget $((LEFT - 40)) "${EXTRA[@]}"

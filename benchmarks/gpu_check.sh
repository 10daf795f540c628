#!/usr/bin/env bash
# GPU check of the exported model's maths (torch CUDA fp32/tf32/fp16 parity with the CPU ONNX Runtime
# scores, p50/p99 at batch 1 and 8). Needs torch with CUDA; installs nothing, downloads nothing.
#
#   1. CPU machine (the project's .venv), from the repository root:
#        .venv/bin/python benchmarks/gpu_check.py prepare --model MODEL_DIR --out runs/gpu_bundle
#   2. GPU machine, working tree copied with runs/gpu_bundle carried along, from the repository root:
#        bash benchmarks/gpu_check.sh runs/gpu_bundle
#      (with the device tool: command "bash benchmarks/gpu_check.sh runs/gpu_bundle",
#       carry ["runs/gpu_bundle"], timeout_s 330; the log and JSON come back from $OUT)
#
# Ends within 5 minutes: the Python part is killed at 280 s (each timed row stops at 4 s).
set -uo pipefail
cd "$(dirname "$0")/.."
BUNDLE="${1:-runs/gpu_bundle}"
DEST="${OUT:-runs}"
mkdir -p "$DEST"
PY="${PYTHON:-python3}"
if [ ! -f "$BUNDLE/reference.npz" ]; then
  echo "error: $BUNDLE/reference.npz not found; run step 1 (gpu_check.py prepare) on the CPU machine and carry the bundle" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$DEST/gpu_check_smi.txt" || true
PYTHONUNBUFFERED=1 timeout 280 "$PY" benchmarks/gpu_check.py run --bundle "$BUNDLE" --device cuda \
  --json "$DEST/gpu_check.json" 2>&1 | tee "$DEST/gpu_check.log"
rc=${PIPESTATUS[0]}
echo "gpu_check exit status: $rc (0 = all judged modes within tolerance, 1 = some outside, 124 = timed out)"
exit "$rc"

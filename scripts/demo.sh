#!/usr/bin/env bash
# The main job on the bundled sample, offline, on CPU:
# fit -> export (fused ONNX) -> calibrate -> evaluate -> stream a video as a camera -> verdicts on ZeroMQ.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
edge-somad demo --out "${DEMO_OUT:-models/hazelnut_toy}" --publish "${DEMO_PUBLISH:-tcp://127.0.0.1:5556}"

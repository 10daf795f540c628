#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with edge-somad[fit,dev] installed.
# torch is pinned to 2.13.0 first: on our CI machines that is a CPU wheel on local disk, and an
# unpinned "torch" would pull a multi-GB CUDA build. On your machine it comes from PyPI as usual.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install --quiet "torch==${TORCH_VERSION:-2.13.0}"
fi
python -m pip install --quiet -e ".[fit,dev]"

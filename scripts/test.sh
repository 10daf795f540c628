#!/usr/bin/env bash
# Lint and the test suite (GPU tests skip themselves on a CPU-only machine).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check .
python -m pytest -q "$@"

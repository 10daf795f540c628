#!/usr/bin/env bash
# The documented minimal installs, each in a clean virtual environment, each running real commands:
#   [fit,cpu]  fit -> export -> calibrate -> evaluate on the bundled Hazelnut Toy sample (small input)
#   [cpu]      (the edge runtime: no torch, no scipy) `run` on the model the [fit,cpu] venv exported
# Non-editable installs, so a file missing from the package (sample images, the view page) fails here.
# torch is pinned like scripts/setup.sh: a CPU wheel on local disk in CI, never a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/edge-somad-installs.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# Install from a copy of the tracked and new files: setuptools builds in the source tree and would
# carry stale files from an old build/ folder into the wheel.
REPO="$WORK/src"
mkdir "$REPO"
git ls-files -z -co --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$REPO"
cd "$WORK"  # never import the checkout: python -c puts the working directory on sys.path

fresh_venv() {  # fresh_venv DIR EXTRAS
  "$PY" -m venv "$1"
  "$1/bin/python" -m pip install --quiet --upgrade pip
  if [[ "$2" == *fit* ]]; then
    "$1/bin/python" -m pip install --quiet "torch==${TORCH_VERSION:-2.13.0}"
  fi
  # setuptools' build chatter goes to a log, shown only when the install fails
  "$1/bin/python" -m pip install --quiet "$REPO[$2]" >"$1.pip.log" 2>&1 || { cat "$1.pip.log" >&2; exit 1; }
}

echo "check_installs: [fit,cpu] in $WORK/fit" >&2
fresh_venv "$WORK/fit" "fit,cpu"
M="$WORK/model"
"$WORK/fit/bin/edge-somad" fit --out "$M" --height 128 --width 128 --method somad >/dev/null
"$WORK/fit/bin/edge-somad" export --model "$M" --no-trt >/dev/null
"$WORK/fit/bin/edge-somad" calibrate --model "$M" >/dev/null
"$WORK/fit/bin/edge-somad" evaluate --model "$M" --report "$WORK/report.json" >/dev/null
test -s "$WORK/report.json"

echo "check_installs: [cpu] (runtime only) in $WORK/rt" >&2
fresh_venv "$WORK/rt" "cpu"
if "$WORK/rt/bin/python" -c "import torch" 2>/dev/null || "$WORK/rt/bin/python" -c "import scipy" 2>/dev/null; then
  echo "check_installs: the runtime-only install pulled torch or scipy" >&2
  exit 1
fi
SAMPLE=$("$WORK/rt/bin/python" -c \
  "from edge_somad.data import sample_data_root; print(sample_data_root() / 'hazelnut_toy' / 'test' / 'colour')")
PORT=$("$WORK/rt/bin/python" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
"$WORK/rt/bin/edge-somad" run --model "$M" --camera "line1=$SAMPLE" --max-frames 8 \
  --backend onnxruntime --publish "tcp://127.0.0.1:$PORT" --log-level warning
echo "check_installs: both minimal installs ran their commands" >&2

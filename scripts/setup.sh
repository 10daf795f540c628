#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with edge-somad[cpu,fit,dev,view,bridge] installed
# (+ mosquitto, chromium and Aravis with edge-somad[gige] as root).
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
python -m pip install --quiet -e ".[cpu,fit,dev,view,bridge]"
# `bridge mqtt --sparkplug` needs protobuf (in [bridge]): fail here, not in the Sparkplug tests.
python -c "import google.protobuf" || { echo "setup: protobuf did not install ([bridge] extra)" >&2; exit 1; }
# The `view` browser test drives a real headless chromium (Debian packages; Playwright's own browser
# download is not used). Installed when missing and we are root with apt; otherwise that test skips.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver) \
      || echo "setup: chromium not installed (apt failed); the view browser test will skip" >&2
  else
    echo "setup: chromium/chromedriver missing (needs root + apt); the view browser test will skip" >&2
  fi
fi
# The MQTT bridge tests start a real Mosquitto broker. Install it when missing and we may (root, apt):
# CI runs as root; elsewhere the tests skip and say why.
if ! command -v mosquitto >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get install -y -qq mosquitto >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq mosquitto >/dev/null 2>&1; }; } \
    || echo "setup: could not install mosquitto; the MQTT bridge tests will skip" >&2
fi
# GigE Vision cameras (`--camera aravis:...`): Aravis with its simulated camera (aravis-tools), and what
# PyGObject (edge-somad[gige]) builds against. Installed when missing and we may (root, apt): about a
# minute on a clean machine (apt ~15 s, building PyGObject and pycairo 30-75 s), ~2 s once pip has cached
# the wheels. Elsewhere the Aravis tests skip and say why (and fail under CI=true).
ARAVIS_DEBS="aravis-tools gir1.2-aravis-0.8 libgirepository1.0-dev libcairo2-dev pkg-config"
if ! dpkg -s $ARAVIS_DEBS >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $ARAVIS_DEBS >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 \
           && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $ARAVIS_DEBS >/dev/null 2>&1; }; } \
    || echo "setup: could not install Aravis ($ARAVIS_DEBS); the GigE Vision camera tests will skip" >&2
fi
if pkg-config --exists gobject-introspection-1.0 cairo 2>/dev/null; then
  python -m pip install --quiet -e ".[gige]" \
    || echo "setup: PyGObject (edge-somad[gige]) did not build; the GigE Vision camera tests will skip" >&2
else
  echo "setup: libgirepository1.0-dev/libcairo2-dev missing (needs root + apt); GigE Vision tests will skip" >&2
fi

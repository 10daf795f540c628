"""The CLI must start on a bare edge box: no torch, onnx, cv2, zmq or TensorRT at import time."""

from __future__ import annotations

import subprocess
import sys

BLOCK = ["torch", "onnx", "onnxruntime", "cv2", "zmq", "tensorrt", "scipy", "aiohttp", "selenium", "paho", "asyncua",
         "google"]  # google: protobuf, for `bridge mqtt --sparkplug` only


def test_help_works_with_heavy_packages_blocked() -> None:
    # Setting sys.modules[name] = None makes any `import name` raise ImportError: a missing package.
    code = (
        "import sys\n"
        f"for m in {BLOCK!r}: sys.modules[m] = None\n"
        "sys.argv = ['edge-somad', '--help']\n"
        "from edge_somad.cli import app\n"
        "app()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for command in ("fit", "evaluate", "export", "calibrate", "run", "subscribe", "view", "keys", "bench", "demo",
                    "bridge", "trigger"):
        assert command in out.stdout

"""The `edge-somad` console script users run, for subprocess tests (not `python -m` module paths)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def edge_somad_exe() -> str:
    """The entry point installed beside this interpreter (the venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "edge-somad"
    found = str(beside) if beside.is_file() else shutil.which("edge-somad")
    if found is None:
        raise RuntimeError("the edge-somad console script is not installed: pip install -e '.[cpu,fit,dev]'")
    return found

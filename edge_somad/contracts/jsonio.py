"""JSON files of a model directory (config.json, manifest.json, split.json, ...): atomic write, checked read.

On the ground floor so the manifest and the layout readers use it without importing config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edge_somad.errors import ArtifactError


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically, so a crash never leaves half a config beside good arrays."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist: expected a file written by edge-somad fit/export")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); re-create it with edge-somad") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} holds a {type(data).__name__}, expected a JSON object")
    return data

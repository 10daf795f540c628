"""Kept so `from edge_somad.export.manifest import ...` (documented, used by integrators' scripts)
still works. The manifest now lives on the ground floor: edge_somad/contracts/manifest.py."""

from edge_somad.contracts.manifest import (  # noqa: F401 - re-exported names
    MANIFEST_NAME,
    MANIFEST_SCHEMA,
    Calibration,
    EngineInfo,
    Manifest,
    Preprocessing,
    TensorSpec,
    load_manifest,
    save_manifest,
    sha256_file,
)

"""Kept so `edge_somad.runtime.preprocess.resize_frame / batch_frames` (the documented host-side
resize for integrators feeding the graph themselves) still imports. The code lives on the ground
floor, edge_somad/contracts/geometry.py, shared by fit, evaluate, calibrate and run."""

from edge_somad.contracts.geometry import (  # noqa: F401 - re-exported names
    RESIZE_MODES,
    Geometry,
    batch_frames,
    check_frame,
    plan_geometry,
    resize_frame,
    resize_mask,
)

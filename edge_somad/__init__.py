"""edge-somad: SOMAD anomaly detection from good parts to a PLC, on the edge.

    from edge_somad import Detector
    detector = Detector.load("models/hazelnut_toy")
    prediction = detector.predict(frame)  # BGR uint8 frame -> Prediction(score, verdict, threshold, heatmap, defects)

Names are imported on first use: `import edge_somad` loads nothing heavy, and scoring never imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edge_somad._version import __version__

if TYPE_CHECKING:
    from edge_somad.api import Detector, ExportConfig, FitConfig, Prediction, export_model, fit_model

__all__ = ["Detector", "ExportConfig", "FitConfig", "Prediction", "__version__", "export_model", "fit_model"]
_API = {"Detector", "ExportConfig", "FitConfig", "Prediction", "export_model", "fit_model"}


def __getattr__(name: str) -> Any:
    if name in _API:
        from edge_somad import api

        return getattr(api, name)
    raise AttributeError(f"module 'edge_somad' has no attribute {name!r}")

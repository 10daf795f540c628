"""Which ONNX Runtime flavour is installed and active, said once at start.

onnxruntime (CPU) and onnxruntime-gpu are two distributions of ONE module, `onnxruntime`: with both
installed, the files of the one installed last overwrite the other's, and uninstalling either breaks
the module. pip does not prevent it, so the runtime checks: it names the active flavour (from the
providers the imported module offers, which is what actually runs) and warns when more than one
distribution is present.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import metadata

from edge_somad.errors import BackendUnavailableError

log = logging.getLogger(__name__)

# Distributions that all provide the `onnxruntime` module.
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml")
INSTALL_HINT = "pip install 'edge-somad[cpu]' (CPU) or 'edge-somad[gpu]' (CUDA / TensorRT), not both"


@dataclass(frozen=True)
class OrtFlavour:
    active: str  # "gpu" when the imported module offers CUDA, else "cpu"
    version: str
    providers: tuple[str, ...]
    installed: tuple[str, ...]  # distributions found, e.g. ("onnxruntime", "onnxruntime-gpu")

    @property
    def conflict(self) -> str | None:
        """A warning when several ONNX Runtime distributions share the module, else None."""
        if len(self.installed) < 2:
            return None
        return (f"{' and '.join(self.installed)} are all installed; they share the `onnxruntime` module and the "
                f"last one installed wins: the active build is {self.active} (providers {list(self.providers)}). "
                f"Uninstall all of them and install one: {INSTALL_HINT}.")

    def describe(self) -> str:
        return f"onnxruntime {self.version}, {self.active} build ({', '.join(self.providers)})"


def installed_distributions() -> tuple[str, ...]:
    found = []
    for name in ORT_DISTRIBUTIONS:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return tuple(found)


def detect_flavour() -> OrtFlavour:
    """Import onnxruntime and describe it; raises BackendUnavailableError when none is installed."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendUnavailableError(
            f"no ONNX Runtime is importable here ({exc}); the runtime needs one flavour: {INSTALL_HINT}."
        ) from exc
    providers = tuple(ort.get_available_providers())
    active = "gpu" if "CUDAExecutionProvider" in providers else "cpu"
    return OrtFlavour(active, str(getattr(ort, "__version__", "?")), providers, installed_distributions())


def check_flavour() -> OrtFlavour:
    """detect_flavour, logging the active flavour and warning on a mixed install."""
    flavour = detect_flavour()
    log.info("%s", flavour.describe())
    if flavour.conflict:
        log.warning("%s", flavour.conflict)
    return flavour

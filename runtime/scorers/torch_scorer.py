"""Torch backend: the unfused eager SomadNet, the float reference the ONNX graph is checked against.

Imported only when --backend torch is chosen; the rest of the runtime never imports torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_somad.errors import BackendUnavailableError
from edge_somad.runtime.scorers.scorer import ScoreResult, check_batch


class TorchScorer:
    backend = "torch"

    def __init__(self, model_dir: Path, device: str = "cpu", weights: str | None = None) -> None:
        try:
            import torch
        except ImportError as exc:
            raise BackendUnavailableError(
                "backend torch needs PyTorch: pip install 'edge-somad[fit]', or use --backend onnxruntime"
            ) from exc
        from edge_somad.model import load_torch_model

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailableError(f"torch device {device} requested but torch sees no CUDA GPU")
        self._torch = torch
        self._device = torch.device(device)
        self.net = load_torch_model(Path(model_dir), weights).to(self._device)
        self.height, self.width = self.net.size
        self.device = str(self._device) if self._device.type == "cpu" else torch.cuda.get_device_name(self._device)

    def score(self, frames: np.ndarray) -> ScoreResult:
        check_batch(frames, self.height, self.width)
        torch = self._torch
        with torch.inference_mode():
            amap, score = self.net(torch.from_numpy(frames).to(self._device))
            if self._device.type == "cuda":
                torch.cuda.synchronize(self._device)
        return ScoreResult(scores=score.cpu().numpy(), maps=amap.cpu().numpy())

    def close(self) -> None:
        self.net = None  # type: ignore[assignment]

    def __enter__(self) -> TorchScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

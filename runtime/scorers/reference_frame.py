"""A known frame and the score the exported graph gave it: the self-check before a model goes live.

`export` writes reference_frame.npz (one uint8 BGR frame in model space) and records in
manifest.reference["frame"] the file's sha256, the graph it was scored with and its score (ONNX
Runtime, CPU, fp32). Before `run` puts a new model on a running line (runtime/pipeline/model_slot.py)
it scores that frame with the scorer it just opened and compares: a graph that loads and runs but
computes something else (wrong file, broken provider, damaged weights) is refused there, not after
a shift of wrong verdicts. Bundles exported before this carry no frame; their check is a finite
score and map on a generated frame, and the check says so.

The frame is synthetic (smooth shading plus seeded texture), not a photo of a part: the check is
"this graph computes what it computed at export", which needs a fixed input, not a good part.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from edge_somad.contracts.layout import REFERENCE_FRAME_NAME
from edge_somad.contracts.manifest import Manifest, sha256_file
from edge_somad.errors import ArtifactError
from edge_somad.runtime.scorers.scorer import Scorer

log = logging.getLogger(__name__)

# Relative tolerance of the reference score per precision the graph runs at. fp32 backends differ by
# summation order (CPU vs CUDA vs TensorRT with TF32): well under 1 %. fp16 engines keep the distance
# maths in float32 and were measured within 0.2 % of fp32 (contracts/manifest.threshold_for); 5 %
# leaves room. int8 scores sit on another scale (their own threshold): no comparison, finite only.
TOLERANCE = {"fp32": 0.01, "fp16": 0.05}
ABS_TOLERANCE = 1e-4  # for scores near 0, where a relative bound means nothing


def make_frame(height: int, width: int) -> np.ndarray:
    """A deterministic (height, width, 3) uint8 BGR frame: gradients and seeded noise in every channel."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([128 + 60 * np.sin(xx / max(width, 1) * 2 * math.pi + c) * np.cos(yy / max(height, 1) * math.pi)
                     for c in range(3)], axis=-1)
    noise = np.random.default_rng(20240611).normal(0.0, 12.0, (height, width, 3))
    return np.clip(np.round(base + noise), 0, 255).astype(np.uint8)


def write_reference(model_dir: Path, manifest: Manifest, scorer: Scorer) -> Manifest:
    """Score make_frame with `scorer` (the fp32 graph), save the frame, return the manifest that records it."""
    pre = manifest.preprocessing
    frame = make_frame(pre.height, pre.width)
    result = scorer.score(frame[None])
    score = float(np.asarray(result.scores)[0])
    if not math.isfinite(score):
        raise ArtifactError(f"{model_dir / manifest.onnx} scores the reference frame {score}; expected a finite "
                            "number. The graph is broken: re-export it with `edge-somad export`.")
    path = Path(model_dir) / REFERENCE_FRAME_NAME
    tmp = path.with_name(path.name + ".tmp.npz")  # np.savez adds .npz to a name without it
    np.savez_compressed(tmp, frame=frame)
    tmp.replace(path)
    entry = {"file": REFERENCE_FRAME_NAME, "sha256": sha256_file(path), "onnx_sha256": manifest.onnx_sha256,
             "precision": "fp32", "score": score, "scorer": f"{scorer.backend} on {scorer.device}"}
    return dataclasses.replace(manifest, reference={**manifest.reference, "frame": entry})


def self_check(model_dir: Path, manifest: Manifest, scorer: Scorer, precision: str) -> str:
    """Score the bundle's reference frame with `scorer`; the check that was made, or ArtifactError.

    Checks the score and map are finite and, when the bundle carries a reference for this graph and
    the precision has a tolerance, that the score matches the one recorded at export."""
    entry = manifest.reference.get("frame") if isinstance(manifest.reference, dict) else None
    pre = manifest.preprocessing
    if not entry:
        frame, expected, why = make_frame(pre.height, pre.width), None, (
            "no reference frame in this bundle (exported before they were written): checked finite output only")
    elif entry.get("onnx_sha256") != manifest.onnx_sha256:
        frame, expected, why = make_frame(pre.height, pre.width), None, (
            "the reference frame was scored with another graph than this bundle's: checked finite output only; "
            "re-export to refresh it")
    else:
        frame = _load_frame(Path(model_dir), entry, pre.height, pre.width)
        expected = float(entry["score"]) if precision in TOLERANCE else None
        why = "" if expected is not None else (
            f"reference score is fp32; {precision} scores are on their own scale: checked finite output only")
    score, amap = _score_one(scorer, frame)
    if not math.isfinite(score) or not bool(np.isfinite(amap).all()):
        raise ArtifactError(f"self-check: the graph scored the reference frame {score} with "
                            f"{int(np.size(amap) - np.isfinite(amap).sum())} non-finite map pixels; expected finite "
                            "values. The graph or its backend is broken: re-export or check the backend.")
    if expected is None:
        return f"reference frame scored {score:.6g}; {why}"
    tol = max(ABS_TOLERANCE, TOLERANCE[precision] * abs(expected))
    if abs(score - expected) > tol:
        raise ArtifactError(
            f"self-check: the reference frame scores {score:.6g} here; export recorded {expected:.6g} "
            f"(tolerance {tol:.3g} at {precision}). This graph does not compute what was exported with it "
            "(wrong or damaged file, or a backend that computes differently): re-export the bundle.")
    return f"reference frame scored {score:.6g}, export recorded {expected:.6g} (tolerance {tol:.3g})"


def _load_frame(model_dir: Path, entry: dict[str, Any], height: int, width: int) -> np.ndarray:
    path = model_dir / str(entry.get("file", ""))
    if path.parent != model_dir or not path.is_file():
        raise ArtifactError(f"self-check: reference frame {path} named by manifest.reference.frame is missing; "
                            "copy the whole exported folder (it is written by `edge-somad export`).")
    if sha256_file(path) != entry.get("sha256"):
        raise ArtifactError(f"self-check: {path} does not match manifest.reference.frame.sha256; the folder "
                            "was changed after export: copy it again or re-export.")
    try:
        with np.load(path, allow_pickle=False) as data:
            frame = data["frame"]
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(f"self-check: {path} is not a reference frame ({exc}); re-export.") from exc
    if frame.dtype != np.uint8 or frame.shape != (height, width, 3):
        raise ArtifactError(f"self-check: {path} holds {frame.dtype} {frame.shape}; expected uint8 "
                            f"({height}, {width}, 3) (the manifest's input size): re-export.")
    return frame


def _score_one(scorer: Scorer, frame: np.ndarray) -> tuple[float, np.ndarray]:
    result = scorer.score(frame[None])
    scores, maps = np.asarray(result.scores), np.asarray(result.maps)
    if scores.shape != (1,) or maps.shape != (1, *frame.shape[:2]):
        raise ArtifactError(f"self-check: the scorer returned scores {scores.shape} and maps {maps.shape} for one "
                            f"frame; expected (1,) and (1, {frame.shape[0]}, {frame.shape[1]}).")
    return float(scores[0]), maps[0]

"""What the calibration steps read and score: good frames (held-out split or a folder) and their
scores/maps through a runtime scorer. Shared by calibrate (commands.py) and the int8 step
(int8_step.py), so neither imports the other."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edge_somad.contracts.layout import SPLIT_NAME, split_paths
from edge_somad.contracts.names import IMAGE_SUFFIXES
from edge_somad.errors import DatasetError

if TYPE_CHECKING:
    import numpy as np

    from edge_somad.contracts.manifest import Manifest
    from edge_somad.runtime.scorers.scorer import Scorer

SCORE_BATCH = 8


def score_all(scorer: Scorer, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores (N,) and maps (N, H, W) float32 for a stack of frames, in batches the scorer accepts."""
    import numpy as np

    from edge_somad.evaluate import score_timed

    batch = min(SCORE_BATCH, getattr(scorer, "max_batch", None) or SCORE_BATCH)
    scores, maps, _ = score_timed(scorer, frames, batch)
    return scores.astype(np.float32), maps.astype(np.float32)


def open_model_scorer(model_dir: Path, backend: str, precision: str = "fp32") -> Scorer:
    from edge_somad.runtime.scorers.backends import open_scorer

    return open_scorer(model_dir, backend, precision)


# Frames taken from a commissioning video, evenly spaced over the recording: neighbouring frames show
# the same part, so spreading them out gives more distinct parts for the same scoring time.
VIDEO_MAX_FRAMES = 200


def load_good_frames(
    model_dir: Path, manifest: Manifest, calibration_dir: Path | None, calibration_video: Path | None = None
) -> tuple[np.ndarray, str]:
    """Resized uint8 BGR frames of the good calibration images, and a description of their source."""
    from edge_somad.data import read_frames

    if calibration_dir is not None and calibration_video is not None:
        raise DatasetError("give --calibration-dir or --calibration-video, not both")
    if calibration_video is not None:
        return read_video_frames(calibration_video, manifest)
    if calibration_dir is not None:
        paths = image_files(calibration_dir)
        source = f"{len(paths)} good images from {calibration_dir}"
    else:
        paths = split_paths(model_dir, "holdout")
        if not paths:
            raise DatasetError(
                f"{Path(model_dir) / SPLIT_NAME} lists 0 held-out good images "
                "(fit with holdout_fraction=0?). "
                "Pass --calibration-dir with good images the model never saw, or re-fit with a holdout."
            )
        source = f"{len(paths)} held-out good images (split.json)"
    return read_frames(paths, manifest), source


def load_holdout_frames(model_dir: Path) -> np.ndarray:
    """Resized uint8 BGR frames of split.json's held-out good images (for export/evaluate workflows)."""
    from edge_somad.contracts.manifest import load_manifest

    return load_good_frames(model_dir, load_manifest(model_dir), None)[0]


def image_files(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"--calibration-dir {folder} is not a folder; expected a folder of good images")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DatasetError(f"{folder} holds no {'/'.join(IMAGE_SUFFIXES)} files; expected good part images")
    return paths


def read_video_frames(path: Path, manifest: Manifest, max_frames: int = VIDEO_MAX_FRAMES) -> tuple[np.ndarray, str]:
    """Up to `max_frames` frames spread evenly over a recording of good parts, resized as the graph's input."""
    import numpy as np

    from edge_somad.contracts.geometry import batch_frames

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"--calibration-video {path} does not exist; expected a video file of good parts "
                           "recorded on the line (any format OpenCV's FFmpeg reads, e.g. .mp4/.avi)")
    # Two passes: count the frames with grab() (demux, no decode), then decode only the chosen ones.
    # Decoding and keeping every frame first would hold a whole recording in memory (10 minutes of
    # 1080p at 30 fps is ~100 GB); the container's frame count is not trusted, it is often wrong.
    total = _count_frames(path)
    if total == 0:
        raise _undecodable(path)
    pick = np.unique(np.linspace(0, total - 1, min(max_frames, total)).round().astype(int))
    chosen = _decode_frames(path, set(pick.tolist()))
    if not chosen:
        raise _undecodable(path)
    pre = manifest.preprocessing
    return (batch_frames(chosen, pre.height, pre.width, pre.resize, pre.pad_value),
            f"{len(chosen)} frames spread over the {total} of {path}")


def _undecodable(path: Path) -> DatasetError:
    return DatasetError(f"--calibration-video {path}: OpenCV decoded no frame from it; expected a readable "
                        "video (check the file plays, or extract frames and use --calibration-dir)")


def _count_frames(path: Path) -> int:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        n = 0
        while cap.grab():
            n += 1
        return n
    finally:
        cap.release()


def _decode_frames(path: Path, wanted: set[int]) -> list[np.ndarray]:
    """The frames at the indices in `wanted`, in order; the others are only grabbed, never decoded."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    out = []
    try:
        i = 0
        while len(out) < len(wanted) and cap.grab():
            if i in wanted:
                ok, frame = cap.retrieve()
                if ok:
                    out.append(frame)
            i += 1
    finally:
        cap.release()
    return out

"""Synthetic MVTec-layout data: a textured 'part' on a background, defects painted with masks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def _part(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A good part: the same disc and stripes every time, with mild noise and a small shift."""
    img = np.full((h, w, 3), (40, 60, 80), np.uint8)
    dy, dx = rng.integers(-2, 3, size=2)
    cv2.circle(img, (w // 2 + int(dx), h // 2 + int(dy)), min(h, w) // 3, (160, 170, 150), -1)
    for x in range(0, w, 12):
        cv2.line(img, (x + int(dx), 0), (x + int(dx), h - 1), (90, 100, 110), 2)
    noise = rng.normal(0, 6, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def _defect(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    cy, cx = int(rng.integers(h // 4, 3 * h // 4)), int(rng.integers(w // 4, 3 * w // 4))
    r = int(rng.integers(max(3, min(h, w) // 14), max(4, min(h, w) // 8)))
    cv2.circle(mask, (cx, cy), r, 255, -1)
    out = img.copy()
    out[mask > 0] = (20, 20, 230)  # a red paint blob
    return out, mask


def make_mvtec(root: Path, category: str = "widget", n_train: int = 12, n_good_test: int = 4,
               n_defect: int = 4, size: tuple[int, int] = (120, 160), seed: int = 0) -> Path:
    """Write root/category/{train/good,test/good,test/paint,ground_truth/paint}; returns root."""
    rng = np.random.default_rng(seed)
    h, w = size
    base = root / category
    for sub in ("train/good", "test/good", "test/paint", "ground_truth/paint"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        cv2.imwrite(str(base / "train/good" / f"{i:03d}.png"), _part(rng, h, w))
    for i in range(n_good_test):
        cv2.imwrite(str(base / "test/good" / f"{i:03d}.png"), _part(rng, h, w))
    for i in range(n_defect):
        img, mask = _defect(rng, _part(rng, h, w))
        cv2.imwrite(str(base / "test/paint" / f"{i:03d}.png"), img)
        cv2.imwrite(str(base / "ground_truth/paint" / f"{i:03d}_mask.png"), mask)
    return root


def fit_widget(synth_root: Path, config: object, out: Path, export: bool = False) -> Path:
    """A real fit of the synthetic 'widget' category (make_mvtec) into `out`, exported with export=True."""
    from edge_somad.data import load_category
    from edge_somad.fit import fit_model

    fit_model(load_category(synth_root, "widget"), config, out, progress=False)  # type: ignore[arg-type]
    if export:
        from edge_somad.export.exporter import export_model

        export_model(out)
    return out

"""Regenerate the embedded sample data set (edge_somad/sample_data/hazelnut_toy) from the full copy.

The package ships a small, permissively licensed (CC-BY-4.0) MVTec-layout set so `edge-somad fit`
runs offline with no download. Source images are 512x512 (one is 512x522); every image is resized
to SIZE x SIZE with INTER_AREA — the odd 512x522 one is slightly squashed (about 2 %), which is
harmless for a demo set — and re-encoded as JPEG quality 95 to keep the wheel small. Masks stay
lossless PNG (binary 0/255, INTER_NEAREST) so no JPEG ringing blurs the ground truth.

    python benchmarks/make_sample_data.py --src ../shared/data/hazelnut_toy/hazelnut_toy \
        --dst edge_somad/sample_data/hazelnut_toy --size 256
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

from edge_somad.contracts.names import IMAGE_SUFFIXES

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SRC = REPO.parent / "shared" / "data" / "hazelnut_toy" / "hazelnut_toy"
DEFAULT_DST = REPO / "edge_somad" / "sample_data" / "hazelnut_toy"
JPEG_QUALITY = 95


def convert_image(src: Path, dst: Path, size: int) -> None:
    img = cv2.imread(str(src), cv2.IMREAD_COLOR)
    if img is None:
        raise SystemExit(f"cannot read image {src}")
    small = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    if not cv2.imwrite(str(dst.with_suffix(".jpg")), small, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise SystemExit(f"cannot write {dst.with_suffix('.jpg')}")


def convert_mask(src: Path, dst: Path, size: int) -> None:
    mask = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise SystemExit(f"cannot read mask {src}")
    binary = np.where(mask > 127, 255, 0).astype(np.uint8)
    small = cv2.resize(binary, (size, size), interpolation=cv2.INTER_NEAREST)
    if not cv2.imwrite(str(dst.with_suffix(".png")), small, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise SystemExit(f"cannot write {dst.with_suffix('.png')}")


def convert_tree(src: Path, dst: Path, size: int) -> dict[str, int]:
    if not (src / "train" / "good").is_dir():
        raise SystemExit(f"{src} is not an MVTec-layout category: {src / 'train' / 'good'} is missing")
    if dst.exists():
        shutil.rmtree(dst)
    counts = {"train": 0, "test": 0, "ground_truth": 0}
    for split in counts:
        for path in sorted((src / split).rglob("*")):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            out = dst / path.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            (convert_mask if split == "ground_truth" else convert_image)(path, out, size)
            counts[split] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC, help="full-size MVTec-layout category")
    parser.add_argument("--dst", type=Path, default=DEFAULT_DST, help="output category folder (replaced)")
    parser.add_argument("--size", type=int, default=256, help="output side length in pixels")
    args = parser.parse_args(argv)
    if args.size < 32:
        parser.error(f"--size {args.size} is too small; use >= 32")
    counts = convert_tree(args.src, args.dst, args.size)
    total = sum(f.stat().st_size for f in args.dst.rglob("*") if f.is_file())
    print(f"wrote {counts} to {args.dst} ({total / 1e6:.2f} MB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

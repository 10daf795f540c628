"""Is a frame fit to be inspected? Whole image files only, and big enough for the model.

OpenCV decodes a truncated JPEG without an error: libjpeg prints "Premature end of JPEG file" to
stderr and fills the missing rows with grey, and the scorer then rates a part that was never
fully seen. So an image file is checked structurally before it is decoded (JPEG: the marker
segments and the entropy-coded scans up to the end-of-image marker; PNG: the chunks up to IEND;
BMP and WebP: the size their header declares). TIFF has no cheap end marker: there the decoder's
own refusal is the only check.

The smallest useful frame follows from the model, not from data: the anomaly map is computed on a
grid of one patch per `stride` model pixels (manifest `model.feature_grid`; the backbone's first
tapped stage has stride 4). A frame enlarged by more than `stride` on an axis has less than one
source pixel per patch, and a frame whose content covers less than one patch on the model canvas
(an extreme letterbox) shows the model almost nothing: both are `error`, never scored.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge_somad.contracts.geometry import Geometry, plan_geometry
from edge_somad.contracts.manifest import Manifest
from edge_somad.errors import InputError

# The fused graph's map grid is the stride-4 output of the backbone (edge_somad/features.py:
# grid = (H // 4, W // 4)); used when a manifest predates `model.feature_grid`.
ARCHITECTURE_STRIDE = 4
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Largest frame decoded from a file: 50 MP (an 8K frame is 33 MP). Decoded BGR it is 150 MB.
MAX_FRAME_PIXELS = 50_000_000
_TRUNCATED = "truncated: the file ends before its {}; the decoder would fill the rest with made-up pixels"


def _jpeg_problem(data: bytes) -> str | None:
    """Walk SOI, marker segments and scans; None if the walk reaches EOI inside the data."""
    n, i = len(data), 2
    while True:
        while i < n and data[i] != 0xFF:  # bytes between segments: libjpeg skips them (with a warning)
            i += 1
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            return _TRUNCATED.format("end-of-image marker (FFD9)")
        marker, i = data[i], i + 1
        if marker == 0xD9:
            return None
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM / RSTn: no length field
            continue
        if i + 2 > n:
            return _TRUNCATED.format(f"segment FF{marker:02X}")
        length = int.from_bytes(data[i:i + 2], "big")
        if length < 2:
            return f"corrupt JPEG: segment FF{marker:02X} declares length {length}"
        if i + length > n:
            return _TRUNCATED.format(f"segment FF{marker:02X} ({length} bytes)")
        i += length
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next real marker
            while True:
                j = data.find(b"\xff", i)
                if j < 0 or j + 1 >= n:
                    return _TRUNCATED.format("end of its image data")
                following = data[j + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7:  # stuffed byte / restart marker
                    i = j + 2
                elif following == 0xFF:
                    i = j + 1
                else:
                    i = j
                    break


def _png_problem(data: bytes) -> str | None:
    i, n = len(_PNG_SIGNATURE), len(data)
    while i + 8 <= n:
        length = int.from_bytes(data[i:i + 4], "big")
        kind = data[i + 4:i + 8]
        i += 12 + length  # length, type, data, CRC
        if i > n:
            return _TRUNCATED.format(f"{kind.decode('latin-1')!r} chunk")
        if kind == b"IEND":
            return None
    return _TRUNCATED.format("IEND chunk")


def encoded_image_problem(data: bytes) -> str | None:
    """Why these image-file bytes must not be scored, or None. Never decodes."""
    if not data:
        return "empty file (0 bytes)"
    if data[:2] == b"\xff\xd8":
        return _jpeg_problem(data)
    if data[:8] == _PNG_SIGNATURE:
        return _png_problem(data)
    if data[:2] == b"BM" and len(data) >= 6:
        declared = int.from_bytes(data[2:6], "little")
        return _TRUNCATED.format(f"declared size ({declared} bytes)") if declared > len(data) else None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        declared = int.from_bytes(data[4:8], "little") + 8
        return _TRUNCATED.format(f"declared size ({declared} bytes)") if declared > len(data) else None
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn: frame header
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        i += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8 " and len(data) >= 30:
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    order = {b"II": "little", b"MM": "big"}.get(data[:2])
    if order is None or len(data) < 8:
        return None
    at = int.from_bytes(data[4:8], order)  # type: ignore[arg-type]
    if at + 2 > len(data):
        return None
    size: dict[int, int] = {}
    for k in range(int.from_bytes(data[at:at + 2], order)):  # type: ignore[arg-type]
        e = at + 2 + 12 * k
        if e + 12 > len(data):
            break
        tag, kind = int.from_bytes(data[e:e + 2], order), int.from_bytes(data[e + 2:e + 4], order)  # type: ignore[arg-type]
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3) or LONG (4)
            width = 2 if kind == 3 else 4
            size[tag] = int.from_bytes(data[e + 8:e + 8 + width], order)  # type: ignore[arg-type]
    return (size[256], size[257]) if len(size) == 2 else None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) declared by an image file's header, read without decoding; None if unknown."""
    if data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    if data[:2] == b"BM" and len(data) >= 26:
        return (abs(int.from_bytes(data[18:22], "little", signed=True)),
                abs(int.from_bytes(data[22:26], "little", signed=True)))
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    return _tiff_size(data)


def read_image_file(path: Path, max_pixels: int = MAX_FRAME_PIXELS) -> tuple[np.ndarray | None, str | None]:
    """(image, None) for a complete, decodable file within the pixel budget; (None, reason) otherwise.

    The budget is checked on the header before decoding: a few-kB PNG can declare 20000x20000
    pixels, 1.2 GB once decoded. A file whose size cannot be read from the header is refused too.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return None, f"cannot read image {Path(path).name}: {exc.strerror or exc}"
    problem = encoded_image_problem(data)
    if problem is not None:
        return None, f"image {Path(path).name}: {problem}"
    size = image_size(data)
    if size is None:
        return None, (f"image {Path(path).name}: its header declares no readable width and height "
                      "(PNG, JPEG, BMP, WebP and TIFF are read); not decoded")
    if size[0] * size[1] > max_pixels:
        return None, (f"image {Path(path).name} declares {size[0]}x{size[1]} pixels, above the frame budget of "
                      f"{max_pixels / 1e6:g} MP; not decoded. Resize the images or point the camera at smaller ones.")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        return None, f"cannot decode image {Path(path).name} ({len(data)} bytes)"
    return img, None


def patch_stride(manifest: Manifest) -> tuple[float, float]:
    """Model pixels per anomaly-map patch (y, x), from the manifest's feature grid."""
    pre = manifest.preprocessing
    grid = manifest.model.get("feature_grid")
    if isinstance(grid, (list, tuple)) and len(grid) == 2 and all(isinstance(g, int) and g > 0 for g in grid):
        return pre.height / grid[0], pre.width / grid[1]
    return float(ARCHITECTURE_STRIDE), float(ARCHITECTURE_STRIDE)


def check_useful_size(frame_h: int, frame_w: int, manifest: Manifest) -> None:
    """InputError if the model cannot usefully inspect a frame of this size (module docstring)."""
    pre = manifest.preprocessing
    check_useful_geometry(plan_geometry(frame_h, frame_w, pre.height, pre.width, pre.resize), manifest)


def check_useful_geometry(g: Geometry, manifest: Manifest) -> None:
    """check_useful_size for a frame whose geometry is planned already (the runtime plans it once)."""
    pre = manifest.preprocessing
    sy, sx = patch_stride(manifest)
    frame_h, frame_w = g.src_h, g.src_w
    content_h, content_w = min(g.new_h, pre.height), min(g.new_w, pre.width)
    if g.scale_y > sy or g.scale_x > sx or content_h < sy or content_w < sx:
        raise InputError(
            f"frame {frame_h}x{frame_w} is below the model's minimum useful size: the {pre.resize} resize to "
            f"{pre.height}x{pre.width} enlarges it {g.scale_y:.3g}x (height) and {g.scale_x:.3g}x (width) onto "
            f"{content_h}x{content_w} pixels, but the anomaly map has one patch per {sy:g}x{sx:g} model pixels "
            f"(allowed: at most {sy:g}x{sx:g} enlargement and at least one patch of content). Check the camera's "
            "resolution and region of interest."
        )

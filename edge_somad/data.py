"""MVTec-AD-layout data sets: find a category on disk (or fetch it), list its images, read pixels.

Layout of one category (MVTec AD, and the embedded hazelnut_toy sample)::

    CAT/train/good/*.png                      defect-free training images
    CAT/test/good/*.png                       defect-free test images (label 0)
    CAT/test/<type>/*.png                     defective test images (label 1)
    CAT/ground_truth/<type>/<stem>_mask.png   one binary mask per defective image

No torch here: evaluation and calibration run on edge boxes that only have the runtime install.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import cv2
import numpy as np

from edge_somad.contracts.geometry import batch_frames
from edge_somad.contracts.names import IMAGE_SUFFIXES
from edge_somad.errors import DatasetError

if TYPE_CHECKING:
    from edge_somad.contracts.manifest import Manifest

SAMPLE_CATEGORY = "hazelnut_toy"
DATA_ENV = "EDGE_SOMAD_DATA"
MVTEC_LICENSE = "CC BY-NC-SA 4.0 (MVTec Software GmbH; non-commercial use only)"

# Official MVTec AD share links, as listed by many public loaders (e.g. anomalib's datamodule for
# the whole archive). MVTec publishes no per-category checksum, so per-category downloads are
# verified structurally after extraction and their sha256/size is printed for the user to pin.
_MYDRIVE = "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
MVTEC_ARCHIVES: dict[str, str] = {
    "bottle": _MYDRIVE + "420937370-1629951468/bottle.tar.xz",
    "cable": _MYDRIVE + "420937413-1629951498/cable.tar.xz",
    "capsule": _MYDRIVE + "420937454-1629951595/capsule.tar.xz",
    "carpet": _MYDRIVE + "420937484-1629951672/carpet.tar.xz",
    "grid": _MYDRIVE + "420937487-1629951814/grid.tar.xz",
    "hazelnut": _MYDRIVE + "420937545-1629951845/hazelnut.tar.xz",
    "leather": _MYDRIVE + "420937607-1629951964/leather.tar.xz",
    "metal_nut": _MYDRIVE + "420937637-1629952063/metal_nut.tar.xz",
    "pill": "https://www.mydrive.ch/shares/43421/11a215a5749fcfb75e331ddd5f8e43ee/download/"
    "420938129-1629953099/pill.tar.xz",
    "screw": _MYDRIVE + "420938130-1629953152/screw.tar.xz",
    "tile": _MYDRIVE + "420938133-1629953189/tile.tar.xz",
    "toothbrush": _MYDRIVE + "420938134-1629953256/toothbrush.tar.xz",
    "transistor": _MYDRIVE + "420938166-1629953277/transistor.tar.xz",
    "wood": _MYDRIVE + "420938383-1629953354/wood.tar.xz",
    "zipper": _MYDRIVE + "420938385-1629953449/zipper.tar.xz",
}
MVTEC_CATEGORIES = tuple(MVTEC_ARCHIVES)
# The whole data set in one archive (all 15 categories); this one has a widely reproduced sha256.
MVTEC_FULL_URL = _MYDRIVE + "420938113-1629952094/mvtec_anomaly_detection.tar.xz"
MVTEC_FULL_SHA256 = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
MVTEC_FULL_BYTES = 5_264_982_680


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 0 good, 1 defect
    defect_type: str
    mask_path: Path | None


@dataclass(frozen=True)
class Category:
    name: str
    root: Path
    train: tuple[Path, ...]
    test: tuple[Sample, ...]


def _images_in(folder: Path) -> list[Path]:
    # Stray files (license.txt, .DS_Store, Thumbs.db) are ignored; order is by name, so every run
    # and every machine sees the same sequence.
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _listing(folder: Path) -> str:
    if not folder.is_dir():
        return f"{folder} does not exist"
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    return f"{folder} holds {names[:12]}{' ...' if len(names) > 12 else ''}"


def _layout_error(root: Path, problem: str) -> DatasetError:
    return DatasetError(
        f"{problem}. {_listing(root)}. Expected MVTec layout: {root}/train/good/*.png, "
        f"{root}/test/<good|defect_type>/*.png, {root}/ground_truth/<defect_type>/<stem>_mask.png "
        f"(image suffixes {IMAGE_SUFFIXES})."
    )


def _find_mask(gt_dir: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        candidate = gt_dir / f"{stem}_mask{suffix}"
        if candidate.is_file():
            return candidate
    return None


def load_category(data_root: Path, category: str) -> Category:
    """List one category's images. Every defective test image must have its mask (MVTec always has)."""
    root = Path(data_root) / category
    if not root.is_dir():
        raise _layout_error(Path(data_root), f"category folder {root} does not exist")
    train_dir, test_dir, gt_dir = root / "train" / "good", root / "test", root / "ground_truth"
    if not train_dir.is_dir():
        raise _layout_error(root, f"{train_dir} is missing")
    train = _images_in(train_dir)
    if not train:
        raise _layout_error(root, f"{train_dir} holds no images")
    if not test_dir.is_dir():
        raise _layout_error(root, f"{test_dir} is missing")
    test: list[Sample] = []
    for type_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        kind = type_dir.name
        for path in _images_in(type_dir):
            if kind == "good":
                test.append(Sample(path, 0, kind, None))
                continue
            if not gt_dir.is_dir():
                # No ground_truth/ at all: an image-level set (e.g. screw here). Pixel metrics are
                # skipped for it; a partial ground_truth/ is still an error below.
                test.append(Sample(path, 1, kind, None))
                continue
            mask = _find_mask(gt_dir / kind, path.stem)
            if mask is None:
                # A defect without ground truth would silently count as 'no defect pixels' in the
                # pixel metrics; refuse instead of guessing.
                raise _layout_error(
                    root, f"defect image {path} has no mask {gt_dir / kind}/{path.stem}_mask.png"
                )
            test.append(Sample(path, 1, kind, mask))
    if not test:
        raise _layout_error(root, f"{test_dir} holds no images in any <type>/ subfolder")
    return Category(category, root, tuple(train), tuple(test))


def _decode(path: Path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"image {path} does not exist; expected a readable {IMAGE_SUFFIXES} file")
    # IMREAD_UNCHANGED keeps 16-bit depth and alpha so we convert them explicitly below. It also
    # ignores JPEG EXIF rotation, on purpose: masks are drawn on the stored pixel grid.
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise DatasetError(f"image {path} cannot be decoded by OpenCV; re-save it as PNG/JPEG/BMP")
    return img


def _to_uint8(img: np.ndarray, path: Path) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        # The container's full scale (0..65535) maps onto 0..255; that is the file format's own
        # definition of white, not a guess from the data's range.
        return ((img.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    raise DatasetError(f"image {path} has pixel type {img.dtype}; expected 8- or 16-bit integer pixels")


def read_image(path: Path) -> np.ndarray:
    """Read an image as BGR uint8 HxWx3. Grey -> 3 equal channels, 16-bit -> /257, alpha dropped."""
    img = _to_uint8(_decode(path), Path(path))
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        return cv2.cvtColor(img.reshape(img.shape[:2]), cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 4:
        # Alpha is dropped, not composited: inspection images are opaque photos.
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if img.ndim == 3 and img.shape[2] == 3:
        return np.ascontiguousarray(img)
    raise DatasetError(f"image {path} has shape {img.shape}; expected 1, 3 or 4 channels")


def read_frames(paths: list[Path], manifest: Manifest) -> np.ndarray:
    """Images as the graph's input batch (N, H, W, 3) uint8 BGR, resized as the manifest says.

    The same decoder as fit (16-bit and grey files converted the same way), so calibration and the
    int8 statistics see exactly the pixels the statistics were fitted on.
    """
    pre = manifest.preprocessing
    return batch_frames([read_image(p) for p in paths], pre.height, pre.width, pre.resize, pre.pad_value)


def read_mask(sample: Sample, shape: tuple[int, int]) -> np.ndarray:
    """Ground truth as bool (H, W) at the original image size; all False for good samples."""
    height, width = int(shape[0]), int(shape[1])
    if sample.mask_path is None:
        if sample.label != 0:
            raise DatasetError(f"defect sample {sample.path} has no mask_path; expected one (MVTec layout)")
        return np.zeros((height, width), bool)
    mask = _to_uint8(_decode(sample.mask_path), sample.mask_path)
    if mask.ndim == 3:
        mask = mask[..., :3].max(axis=2)  # a colour-saved mask: any non-black colour channel marks defect
    if mask.shape != (height, width):
        # Nearest keeps the mask binary; a size mismatch happens when images were re-encoded.
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    return mask > 127


def sample_data_root() -> Path:
    """The folder inside the installed package that holds hazelnut_toy/ (CC-BY-4.0)."""
    return Path(__file__).resolve().parent / "sample_data"


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "edge-somad" / "mvtec_ad"


def _has_category(root: Path, category: str) -> bool:
    return (root / category / "train" / "good").is_dir()


def resolve_category(
    category: str, data_root: Path | None = None, download: bool = True, progress: bool = True
) -> Category:
    """Find a category: data_root, $EDGE_SOMAD_DATA, the cache, the embedded sample, then download.

    $EDGE_SOMAD_DATA may list several roots (os.pathsep-separated); downloads then go to the cache.

    An explicit data_root is authoritative: when it lacks the category we never run on data from
    somewhere else (a typo must not silently evaluate the sample set); MVTec categories are then
    downloaded into it.
    """
    if data_root is not None:
        search = [Path(data_root)]
        target = Path(data_root)
    else:
        search = [Path(p) for p in os.environ.get(DATA_ENV, "").split(os.pathsep) if p]
        search.append(default_cache_dir())
        if category == SAMPLE_CATEGORY:
            search.append(sample_data_root())
        target = default_cache_dir()
    for root in search:
        if _has_category(root, category):
            return load_category(root, category)
    if category in MVTEC_ARCHIVES and download:
        download_category(category, target, progress=progress)
        return load_category(target, category)
    hint = "" if category in MVTEC_ARCHIVES else f" (not an MVTec AD category {MVTEC_CATEGORIES})"
    raise DatasetError(
        f"category {category!r}{hint} not found in {[str(p) for p in search]}"
        f"{'; download disabled' if category in MVTEC_ARCHIVES else ''}. Put it at DIR/{category}/"
        f"train/good (MVTec layout) and pass --data-root DIR, set ${DATA_ENV}=DIR, or use "
        f"{default_cache_dir()}/{category}."
    )


def _progress(done: int, total: int | None, name: str) -> None:
    if total:
        filled = int(30 * done / total)
        line = f"\r{name} [{'#' * filled}{'.' * (30 - filled)}] {done / 1e6:7.1f}/{total / 1e6:.1f} MB"
    else:
        line = f"\r{name} {done / 1e6:7.1f} MB"
    sys.stderr.write(line)
    sys.stderr.flush()


def _fetch(url: str, dest: Path, opener: Callable[..., IO[bytes]], timeout: float, progress: bool) -> str:
    """Stream url to dest, returning the sha256 of what was written."""
    digest = hashlib.sha256()
    with opener(url, timeout=timeout) as response, dest.open("wb") as out:
        length = response.headers.get("Content-Length") if hasattr(response, "headers") else None
        total, done = (int(length) if length else None), 0
        while chunk := response.read(1 << 20):
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if progress:
                _progress(done, total, dest.name)
    if progress:
        sys.stderr.write("\n")
    return digest.hexdigest()


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar archive, refusing members that escape dest, links and device files."""
    dest = dest.resolve()
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for m in members:
            target = (dest / m.name).resolve()
            if Path(m.name).is_absolute() or not target.is_relative_to(dest):
                raise DatasetError(f"archive {archive} member {m.name!r} points outside {dest}; refusing it")
            if not (m.isfile() or m.isdir()):
                raise DatasetError(f"archive {archive} member {m.name!r} is a link or device; refusing it")
        # The 'data' filter (Python >= 3.11.4 / 3.10.12) re-checks the same and strips odd modes.
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:  # pragma: no cover - old interpreters; members were validated above
            tar.extractall(dest, members=members)


def download_category(
    category: str,
    dest_root: Path,
    url: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
    opener: Callable[..., IO[bytes]] = urllib.request.urlopen,
    timeout: float = 60.0,
) -> Path:
    """Download and extract one MVTec AD category archive into dest_root/category."""
    url = url or MVTEC_ARCHIVES[category]
    dest_root = Path(dest_root)
    dest_root.mkdir(parents=True, exist_ok=True)
    sys.stderr.write(f"downloading MVTec AD '{category}' ({MVTEC_LICENSE}) from {url}\n")
    with tempfile.TemporaryDirectory(prefix=f".{category}-", dir=dest_root) as tmp:
        archive = Path(tmp) / f"{category}.tar.xz"
        try:
            got = _fetch(url, archive, opener, timeout, progress)
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            raise DatasetError(
                f"cannot download MVTec AD '{category}' from {url} ({exc}). Offline? Put the category "
                f"at DIR/{category}/train/good (MVTec layout) and pass --data-root DIR, or extract it "
                f"into {default_cache_dir()}/{category}. MVTec AD is licensed {MVTEC_LICENSE}: get it "
                "from https://www.mvtec.com/company/research/datasets/mvtec-ad"
            ) from exc
        size = archive.stat().st_size
        if sha256 is not None and got != sha256.lower():
            raise DatasetError(
                f"download of {url} is corrupt: sha256 {got} ({size} bytes), expected {sha256}. "
                "Delete partial files and retry, or download it by hand."
            )
        if sha256 is None:
            sys.stderr.write(f"{archive.name}: {size} bytes, sha256 {got} (MVTec publishes no checksum)\n")
        extracted = Path(tmp) / "extracted"
        extracted.mkdir()
        try:
            safe_extract(archive, extracted)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DatasetError(f"archive from {url} cannot be extracted ({exc}); retry the download") from exc
        if not _has_category(extracted, category):
            raise _layout_error(extracted, f"archive from {url} has no {category}/train/good")
        final = dest_root / category
        if final.exists():
            shutil.rmtree(final)
        (extracted / category).rename(final)
    # Provenance beside the data, since there is no official checksum to compare a re-download with.
    (final / "SOURCE.txt").write_text(f"url: {url}\nbytes: {size}\nsha256: {got}\nlicense: {MVTEC_LICENSE}\n")
    return final

"""Reading fetched snapshots and writing one suite category in MVTec AD layout, one builder per source layout.

``Snapshot`` reads blobs of a git snapshot at a pinned commit; ``Writer`` writes the images (shrunk, re-encoded as
PNG, pixel-identical duplicates dropped) and binary masks and keeps the counts; each ``build_<layout>`` turns one
source layout into ``train/good``, ``test/good``, ``test/<type>`` and ``ground_truth/<type>/<stem>_mask.png`` and
returns a sentence on how it split the data (written to SOURCE.txt).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import TypeVar

import cv2
import numpy as np
from suite_sources import Source  # benchmarks/ is a folder of scripts, not a package

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")
T = TypeVar("T")


class Snapshot:
    """Reads blobs of one fetched git snapshot through a single ``git cat-file --batch`` process."""

    def __init__(self, mirror_root: Path, src: Source) -> None:
        self.git_dir = mirror_root / src.repo.replace("/", "+") / "repo"
        if not self.git_dir.is_dir():
            raise SystemExit(f"{src.category}: snapshot {self.git_dir} is missing - run fetch github:{src.repo} first")
        if self._git("cat-file", "-t", src.commit).strip() != "commit":
            raise SystemExit(f"{src.category}: commit {src.commit} not in {self.git_dir} - run fetch github:{src.repo}")
        self.commit = src.commit
        cmd = ["git", "--git-dir", str(self.git_dir), "cat-file", "--batch"]
        self._batch = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def _git(self, *args: str) -> str:
        res = subprocess.run(["git", "--git-dir", str(self.git_dir), *args], capture_output=True, text=True)
        return res.stdout if res.returncode == 0 else ""

    def files(self, folder: str) -> dict[str, str]:
        """Map of path (relative to ``folder``; "" = the repository root) -> blob id for every file below it."""
        out: dict[str, str] = {}
        where = ["--", folder.rstrip("/") + "/"] if folder else []
        for line in self._git("ls-tree", "-r", self.commit, *where).splitlines():
            meta, path = line.split("\t", 1)
            mode, kind, sha = meta.split()
            if kind == "blob" and mode != "120000":
                out[str(PurePosixPath(path).relative_to(folder)) if folder else path] = sha
        return out

    def read(self, sha: str) -> bytes:
        assert self._batch.stdin is not None and self._batch.stdout is not None
        self._batch.stdin.write(sha.encode() + b"\n")
        self._batch.stdin.flush()
        header = self._batch.stdout.readline().split()
        if len(header) != 3 or header[1] != b"blob":
            raise SystemExit(f"blob {sha} missing in {self.git_dir} (incomplete snapshot?)")
        data = self._batch.stdout.read(int(header[2]))
        self._batch.stdout.read(1)
        return data

    def close(self) -> None:
        self._batch.communicate()


def decode(data: bytes, mask: bool) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE if mask else cv2.IMREAD_UNCHANGED)


def shrink(img: np.ndarray, max_side: int, mask: bool) -> np.ndarray:
    h, w = img.shape[:2]
    if max(h, w) <= max_side:
        return img
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(img, size, interpolation=cv2.INTER_NEAREST if mask else cv2.INTER_AREA)


def spread(items: Sequence[T], cap: int) -> list[T]:
    """At most ``cap`` items, evenly spaced over ``items`` (all when cap is 0 or not reached); deterministic."""
    if cap <= 0 or len(items) <= cap:
        return list(items)
    return [items[i * len(items) // cap] for i in range(cap)]


class Writer:
    """Writes one category and keeps the facts for SOURCE.txt."""

    def __init__(self, root: Path, max_side: int) -> None:
        self.root, self.max_side = root, max_side
        self.counts: dict[str, int] = {}
        self.sizes: set[tuple[int, int]] = set()
        self.seen: set[str] = set()
        self.masks = self.dropped = 0

    def image(self, rel: str, data: bytes) -> np.ndarray | None:
        """Write one image; None (and nothing written) when an identical image was already written."""
        img = decode(data, mask=False)
        if img is None:
            raise SystemExit(f"{rel}: the source file does not decode as an image")
        digest = hashlib.sha1(img.tobytes()).hexdigest()
        if digest in self.seen:
            self.dropped += 1
            return None
        self.seen.add(digest)
        img = shrink(img, self.max_side, mask=False)
        self._put(rel, img)
        folder = str(PurePosixPath(rel).parent)
        self.counts[folder] = self.counts.get(folder, 0) + 1
        self.sizes.add((img.shape[1], img.shape[0]))
        return img

    def mask(self, rel: str, mask: np.ndarray, shape: tuple[int, ...]) -> None:
        mask = np.where(shrink(mask, self.max_side, mask=True) > 0, 255, 0).astype(np.uint8)
        if mask.shape[:2] != shape[:2]:
            mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
        self._put(rel, mask)
        self.masks += 1

    def _put(self, rel: str, img: np.ndarray) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), img):
            raise SystemExit(f"could not write {path}")


def write_split(snap: Snapshot, src: Source, out: Writer, files: dict[str, str], train: Sequence[str],
                held: Sequence[str], defective: Sequence[str], defect: str) -> None:
    """Write capped train/good, test/good and test/<defect> image lists (paths are keys of ``files``)."""
    for folder, names, cap in (("train/good", train, src.max_train), ("test/good", held, src.max_test_good),
                               (f"test/{defect}", defective, src.max_test_defective)):
        for p in spread(sorted(names), cap):
            out.image(f"{folder}/{PurePosixPath(p).stem}.png", snap.read(files[p]))


def build_mvtec(snap: Snapshot, src: Source, out: Writer) -> str:
    files = {p: s for p, s in snap.files(src.path).items() if p.lower().endswith(IMAGE_EXTS)}
    train = sorted(p for p in files if p.startswith("train/good/"))
    held = sorted(p for p in files if src.test_good and p.startswith(src.test_good + "/"))
    split_note = f"{src.test_good} -> test/good"
    if not held:
        held, train = train[4::5], [p for i, p in enumerate(train) if i % 5 != 4]
        split_note = "no good test images in the copy: every 5th sorted train/good image -> test/good"
    write_split(snap, src, out, files, train, held, (), "defective")
    for p in sorted(p for p in files if p.startswith("test/") and not p.startswith("test/good/")):
        defect, stem = PurePosixPath(p).parent.name, PurePosixPath(p).stem
        img = out.image(f"test/{defect}/{stem}.png", snap.read(files[p]))
        gt = f"ground_truth/{defect}/{src.mask_name.format(stem=stem)}"
        if img is not None and gt in files:
            out.mask(f"ground_truth/{defect}/{stem}_mask.png", decode(snap.read(files[gt]), mask=True), img.shape)
    return split_note


def build_pairs(snap: Snapshot, src: Source, out: Writer) -> str:
    files = snap.files(src.path)
    for split in (*src.train_splits, *src.test_splits):
        for p in sorted(p for p in files if p.startswith(f"{split}/images/") and p.lower().endswith(IMAGE_EXTS)):
            stem = PurePosixPath(p).stem
            mask = decode(snap.read(files[p.replace("/images/", "/masks/")]), mask=True)
            if mask.any():
                img = out.image(f"test/defective/{stem}.png", snap.read(files[p]))
                if img is not None:
                    out.mask(f"ground_truth/defective/{stem}_mask.png", mask, img.shape)
            else:
                where = "train" if split in src.train_splits else "test"
                out.image(f"{where}/good/{stem}.png", snap.read(files[p]))
    tr, te = "+".join(src.train_splits), "+".join(src.test_splits)
    return f"empty-mask images of {tr} -> train/good, of {te} -> test/good, the rest -> test/defective"


def polygon_mask(label: dict, where: str) -> np.ndarray:
    """Fill the polygons of one labelme annotation at the annotated image size (0/255)."""
    mask = np.zeros((int(label["imageHeight"]), int(label["imageWidth"])), np.uint8)
    for shape in label["shapes"]:
        if shape.get("shape_type", "polygon") != "polygon":
            raise SystemExit(f"{where}: shape type {shape.get('shape_type')!r}, expected 'polygon'")
        pts = np.round(np.asarray(shape["points"], np.float64)).astype(np.int32)
        cv2.fillPoly(mask, [pts.reshape(-1, 1, 2)], 255)
    return mask


def build_labelme_wear(snap: Snapshot, src: Source, out: Writer) -> str:
    """Wear sequences ``data/<cam>_<time>_<pos>_<angle>_<subset>.jpg`` + ``label/<stem>.json`` (labelme polygons).

    A position's frames before its first annotated frame are good; unannotated frames after it are dropped.
    Positions sorted by name alternate: even index -> train/good, odd index -> test (good and defective).
    """
    files = snap.files(src.path)
    sequences: dict[str, list[tuple[str, str]]] = {}
    for p in files:
        parts = PurePosixPath(p).stem.split("_")
        in_data = str(PurePosixPath(p).parent) == "data"  # data/BSD/test/ holds a stray copy of one frame
        if in_data and p.endswith(".jpg") and len(parts) == 6 and "_".join(parts[4:]) == src.subset:
            sequences.setdefault("_".join((parts[0], *parts[2:4])), []).append((parts[1], p))
    if not sequences:
        raise SystemExit(f"{src.category}: no data/*_{src.subset}.jpg frames in {snap.git_dir}")
    train: list[str] = []
    held: list[str] = []
    defective: list[str] = []
    for i, key in enumerate(sorted(sequences)):
        frames = [p for _, p in sorted(sequences[key])]
        labelled = [f"label/{PurePosixPath(p).stem}.json" in files for p in frames]
        first = labelled.index(True) if any(labelled) else len(frames)
        (train if i % 2 == 0 else held).extend(frames[:first])
        if i % 2 == 1:
            defective.extend(p for p, lab in zip(frames, labelled, strict=True) if lab)
    write_split(snap, src, out, files, train, held, (), "pitting")
    for p in spread(sorted(defective), src.max_test_defective):
        stem = PurePosixPath(p).stem
        label = json.loads(snap.read(files[f"label/{stem}.json"]))
        data = snap.read(files[p])
        img = out.image(f"test/pitting/{stem}.png", data)
        if img is not None:
            mask = polygon_mask(label, f"label/{stem}.json")
            if mask.shape[:2] != decode(data, mask=True).shape[:2]:
                raise SystemExit(f"label/{stem}.json: annotated size {mask.shape[::-1]} differs from the image")
            out.mask(f"ground_truth/pitting/{stem}_mask.png", mask, img.shape)
    return (f"{len(sequences)} positions; even-indexed positions' frames before the first annotated one -> "
            f"train/good ({len(train)} before caps), odd-indexed -> test/good ({len(held)}) and annotated -> "
            f"test/pitting ({len(defective)}); polygons filled as masks")


def build_graded_csv(snap: Snapshot, src: Source, out: Writer) -> str:
    """``labels.csv`` rows ``<image path> <grade 0..1> <subset>``: grade 0 -> good, grade 1 -> defective."""
    files = snap.files(src.path)
    if "labels.csv" not in files:
        raise SystemExit(f"{src.category}: {src.path}/labels.csv missing in {snap.git_dir}")
    good: list[str] = []
    defective: list[str] = []
    for n, line in enumerate(snap.read(files["labels.csv"]).decode().splitlines(), 1):
        fields = line.split()
        if len(fields) != 3 or fields[0] not in files:
            raise SystemExit(f"{src.category}: labels.csv line {n} {line!r}: expected '<image> <grade> <type>'")
        if fields[2] == src.subset and float(fields[1]) in (0.0, 1.0):
            (good if float(fields[1]) == 0.0 else defective).append(fields[0])
    good.sort()
    write_split(snap, src, out, files, [p for i, p in enumerate(good) if i % 5 != 4], good[4::5], defective,
                "defective")
    return (f"{src.subset} cells graded 0 -> good (every 5th sorted -> test/good), graded 1 -> test/defective "
            f"({len(defective)} before caps); grades 1/3 and 2/3 dropped; no masks")


def build_class_folders(snap: Snapshot, src: Source, out: Writer) -> str:
    """``<path>/<subset>/`` holds the good images, every other subfolder one defect type; no masks, no split."""
    files = {p: s for p, s in snap.files(src.path).items() if p.lower().endswith(IMAGE_EXTS) and p.count("/") == 1}
    good = sorted(p for p in files if p.startswith(src.subset + "/"))
    if not good:
        raise SystemExit(f"{src.category}: no images in {src.path}/{src.subset}/ of {snap.git_dir}")
    write_split(snap, src, out, files, [p for i, p in enumerate(good) if i % 5 != 4], good[4::5], (), "")
    types = sorted({p.split("/")[0] for p in files} - {src.subset})
    for defect in types:
        write_split(snap, src, out, files, (), (), [p for p in files if p.startswith(defect + "/")], defect)
    return (f"{src.subset}/ -> good (every 5th sorted -> test/good), {', '.join(t + '/' for t in types)} -> "
            f"test/<same name>; no masks")


def manifest_mask(data: bytes, where: str) -> np.ndarray:
    """A Ground Truth mask PNG as 0/255: its alpha channel where it has one (the colour fringe is transparent)."""
    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise SystemExit(f"{where}: does not decode as an image")
    if mask.ndim == 3:
        mask = mask[..., 3] if mask.shape[2] == 4 else mask.max(axis=2)
    return np.where(mask > 127, 255, 0).astype(np.uint8)


def build_gt_manifest(snap: Snapshot, src: Source, out: Writer) -> str:
    """SageMaker Ground Truth manifest (JSON lines): ``anomaly-label`` 0 -> train/good, 1 with ``anomaly-mask-ref``
    -> test/<mask class>; files whose path starts with ``test_good`` -> test/good."""
    files = snap.files(src.path)
    if src.manifest not in files:
        raise SystemExit(f"{src.category}: manifest {src.path}/{src.manifest} missing in {snap.git_dir}")
    base = str(PurePosixPath(src.manifest).parent.parent)  # manifest refs are relative to the dataset folder
    train: list[str] = []
    defective: dict[str, str] = {}
    classes: set[str] = set()
    for n, line in enumerate(snap.read(files[src.manifest]).decode().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        image = f"{base}/{row['source-ref']}"
        if image not in files:
            raise SystemExit(f"{src.category}: manifest line {n} names {image}, which the snapshot lacks")
        if row["anomaly-label"] == 0:
            train.append(image)
        elif "anomaly-mask-ref" in row:
            defective[image] = f"{base}/{row['anomaly-mask-ref']}"
            colours = row["anomaly-mask-ref-metadata"]["internal-color-map"].values()
            classes.update(c["class-name"] for c in colours if c["class-name"] != "BACKGROUND")
    defect = classes.pop() if len(classes) == 1 else "defective"
    held = [p for p in files if p.startswith(src.test_good) and p.lower().endswith(IMAGE_EXTS)]
    write_split(snap, src, out, files, train, held, (), defect)
    for p in spread(sorted(defective), src.max_test_defective):
        stem = PurePosixPath(p).stem
        img = out.image(f"test/{defect}/{stem}.png", snap.read(files[p]))
        if img is not None:
            mask = manifest_mask(snap.read(files[defective[p]]), defective[p])
            out.mask(f"ground_truth/{defect}/{stem}_mask.png", mask, img.shape)
    return (f"manifest label 0 -> train/good ({len(train)} before the cap), label 1 with a mask -> test/{defect} "
            f"({len(defective)}; mask = alpha > 127), {src.test_good}* -> test/good ({len(held)}); test images "
            f"without a mask are not used")


BUILDERS: dict[str, Callable[[Snapshot, Source, Writer], str]] = {
    "mvtec": build_mvtec,
    "pairs": build_pairs,
    "labelme_wear": build_labelme_wear,
    "graded_csv": build_graded_csv,
    "gt_manifest": build_gt_manifest,
    "class_folders": build_class_folders,
}

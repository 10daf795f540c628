"""Lay out the development suite of real anomaly-detection categories in MVTec AD layout.

Each category is read from a git snapshot fetched with the ``fetch`` tool (``<mirror-root>/<owner>+<name>/repo``)
at a pinned commit and written as ``<out>/<category>/{train/good,test/good,test/<type>,ground_truth/<type>}`` plus
SOURCE.txt. Longer side > ``--max-side`` is shrunk (INTER_AREA; masks INTER_NEAREST, binarised to 0/255);
pixel-identical duplicate images are dropped. ``--shared DIR`` links the categories already kept under ``DIR``.

    python benchmarks/suite_data.py --mirror-root /work/.mirror --shared /work/shared/data
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")
COLS = ("category", "train_good", "test_good", "test_defective", "masks", "size")


@dataclass(frozen=True)
class Source:
    """One category taken from one fetched repository."""

    category: str
    repo: str  # owner/name on GitHub
    commit: str  # pinned commit (need not be HEAD)
    path: str  # folder inside the repository
    licence: str
    layout: str  # "mvtec": train/good, test/<type>, ground_truth/<type>; "pairs": <split>/images + <split>/masks
    test_good: str = "test/good"  # mvtec: folder of held-out good images ("" = take every 5th train image)
    mask_name: str = "{stem}_mask.png"  # mvtec: mask file name inside ground_truth/<type>/
    train_splits: tuple[str, ...] = ("train",)  # pairs: splits whose empty-mask images are train/good
    test_splits: tuple[str, ...] = ("test",)  # pairs: splits whose empty-mask images are test/good
    note: str = ""


SOURCES: tuple[Source, ...] = (
    Source(
        category="juice_bottle",
        repo="jasonjin34/logicAD",
        commit="f222feb67c7644d12c057990ca6b3a1b034c60b7",
        path="datasets/juice_bottle",
        licence="CC BY-NC-SA 4.0 (MVTec Software GmbH; MVTec LOCO AD, license.txt/readme.txt in the folder)",
        layout="mvtec",
        test_good="validation/good",
        mask_name="{stem}.png",
        note=(
            "MVTec LOCO AD juice_bottle from the repo history (refs/pull/13/head; at HEAD datasets/ are symlinks): "
            "train/good 335, validation/good 54, test/logical_anomalies 142 + flattened masks. LOCO's test/good (94) "
            "and structural_anomalies (94) are not in the copy; validation/good is used as test/good."
        ),
    ),
    Source(
        category="metal_plate",
        repo="BupeshKumarR/defect-segmentation-for-mpdd",
        commit="5d8b9cddfa7af2f145bafaaf6eca53294f5aa7b0",
        path="data_supervised/metal_plate",
        licence="MPDD (Jezek et al., 2021), research use; licence not stated in the host repo (unverified)",
        layout="pairs",
        train_splits=("train", "val"),
        test_splits=("test",),
        note=(
            "MPDD metal_plate re-split by the host repo (prepare_segmentation.py: 512x512, train+val = MPDD "
            "train/good + 70% of defective, test = MPDD test/good + rest; one mask per image, empty for good; "
            "10 defective images stored twice). Defect types are lost: all defective images -> 'defective'."
        ),
    ),
)

# Categories already kept under --shared (relative path of the MVTec-layout folder).
SHARED_LINKS: dict[str, str] = {
    "bottle": "mvtec_ad/bottle",
    "toothbrush": "mvtec_ad/toothbrush",
    "screw": "mvtec_ad/screw",
    "hazelnut_toy": "hazelnut_toy/hazelnut_toy",
    "magnetic_tile": "magnetic_tile/magnetic_tile",
}


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
        """Map of path (relative to ``folder``) -> blob id for every file below ``folder``."""
        out: dict[str, str] = {}
        for line in self._git("ls-tree", "-r", self.commit, "--", folder.rstrip("/") + "/").splitlines():
            meta, path = line.split("\t", 1)
            mode, kind, sha = meta.split()
            if kind == "blob" and mode != "120000":
                out[str(PurePosixPath(path).relative_to(folder))] = sha
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


def build_mvtec(snap: Snapshot, src: Source, out: Writer) -> str:
    files = {p: s for p, s in snap.files(src.path).items() if p.lower().endswith(IMAGE_EXTS)}
    train = sorted(p for p in files if p.startswith("train/good/"))
    held = sorted(p for p in files if src.test_good and p.startswith(src.test_good + "/"))
    split_note = f"{src.test_good} -> test/good"
    if not held:
        held, train = train[4::5], [p for i, p in enumerate(train) if i % 5 != 4]
        split_note = "no good test images in the copy: every 5th sorted train/good image -> test/good"
    for p in train:
        out.image(f"train/good/{PurePosixPath(p).stem}.png", snap.read(files[p]))
    for p in held:
        out.image(f"test/good/{PurePosixPath(p).stem}.png", snap.read(files[p]))
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


def build(src: Source, mirror_root: Path, out_root: Path, max_side: int) -> dict[str, str]:
    snap = Snapshot(mirror_root, src)
    dest = out_root / src.category
    if dest.is_symlink() or not dest.exists():
        dest.unlink(missing_ok=True)
    else:
        shutil.rmtree(dest)
    writer = Writer(dest, max_side)
    try:
        split_note = (build_mvtec if src.layout == "mvtec" else build_pairs)(snap, src, writer)
    finally:
        snap.close()
    c = writer.counts
    defect = {k.split("/", 1)[1]: v for k, v in c.items() if k.startswith("test/") and k != "test/good"}
    sizes = ", ".join(f"{w}x{h}" for w, h in sorted(writer.sizes))
    counts = (c.get("train/good", 0), c.get("test/good", 0), sum(defect.values()), writer.masks)
    row = dict(zip(COLS, (src.category, *map(str, counts), sizes), strict=True))
    (dest / "SOURCE.txt").write_text(
        f"Category {src.category}, laid out by benchmarks/suite_data.py. Development use only; never commit images.\n"
        f"Source: github.com/{src.repo} @ {src.commit}, path {src.path}/\n"
        f"Licence: {src.licence}\n"
        f"About the copy: {src.note}\n"
        f"Counts: train/good {row['train_good']}; test/good {row['test_good']}; "
        + "; ".join(f"test/{k} {v}" for k, v in sorted(defect.items()))
        + f"; ground_truth masks {writer.masks}\n"
        f"Image size(s) written: {sizes}\n"
        f"Changes: {split_note}; {writer.dropped} pixel-identical duplicate image(s) dropped; every image "
        f"re-encoded as PNG; longer side > {max_side} shrunk to {max_side} "
        f"(INTER_AREA; masks INTER_NEAREST); masks binarised to 0/255 as ground_truth/<type>/<stem>_mask.png.\n",
        encoding="utf-8",
    )
    return row


def count_existing(category: str, root: Path) -> dict[str, str]:
    def n(folder: Path) -> int:
        return sum(p.suffix.lower() in IMAGE_EXTS for p in folder.rglob("*")) if folder.is_dir() else 0

    bad = sum(n(d) for d in (root / "test").iterdir() if d.is_dir() and d.name != "good")
    h, w = cv2.imread(str(min((root / "train" / "good").iterdir())), cv2.IMREAD_UNCHANGED).shape[:2]
    counts = (n(root / "train" / "good"), n(root / "test" / "good"), bad, n(root / "ground_truth"))
    return dict(zip(COLS, (category, *map(str, counts), f"{w}x{h} (first train image)"), strict=True))


def link_shared(shared: Path, out_root: Path) -> list[dict[str, str]]:
    rows = []
    for category, rel in SHARED_LINKS.items():
        target, link = (shared / rel).resolve(), out_root / category
        if not (target / "train" / "good").is_dir():
            raise SystemExit(f"{target} has no train/good; cannot link {category}")
        if link.exists() and not link.is_symlink():
            raise SystemExit(f"{link} exists and is not a symlink; move it away first")
        link.unlink(missing_ok=True)
        link.symlink_to(target, target_is_directory=True)
        rows.append(count_existing(category, link))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mirror-root", type=Path, required=True, help="where fetched repository snapshots live")
    ap.add_argument("--out", type=Path, default=Path("~/.cache/edge-somad/suite"))
    ap.add_argument("--shared", type=Path, default=None, help="also link the categories kept under this data folder")
    ap.add_argument("--max-side", type=int, default=512)
    args = ap.parse_args(argv)
    out_root = args.out.expanduser()
    out_root.mkdir(parents=True, exist_ok=True)
    rows = [build(src, args.mirror_root, out_root, args.max_side) for src in SOURCES]
    if args.shared is not None:
        rows += link_shared(args.shared, out_root)
    widths = [max(len(c), *(len(r[c]) for r in rows)) for c in COLS]
    for r in [dict(zip(COLS, COLS, strict=True)), *rows]:
        print("  ".join(r[c].ljust(w) for c, w in zip(COLS, widths, strict=True)).rstrip())
    print(f"suite root: {out_root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

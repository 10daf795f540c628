"""Lay out the development suite of real anomaly-detection categories in MVTec AD layout.

Each category is read from a git snapshot fetched with the ``fetch`` tool (``<mirror-root>/<owner>+<name>/repo``)
at a pinned commit and written as ``<out>/<category>/{train/good,test/good,test/<type>,ground_truth/<type>}`` plus
SOURCE.txt. Longer side > ``--max-side`` is shrunk (INTER_AREA; masks INTER_NEAREST, binarised to 0/255);
pixel-identical duplicate images are dropped. ``--shared DIR`` links the categories already kept under ``DIR``.

    python benchmarks/suite_data.py --mirror-root ../.mirror --shared ../shared/data
    python benchmarks/suite_data.py --only ball_screw cookie    # just these fetched categories

The sources are in suite_sources.py, the reader of each source layout in suite_layouts.py; a source may set its own
longer side and caps (evenly spaced over sorted names, so every run picks the same images).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import cv2

# benchmarks/ is a folder of scripts, not a package: siblings are imported by module name.
from suite_layouts import BUILDERS, IMAGE_EXTS, Snapshot, Writer
from suite_sources import SHARED_LINKS, SOURCES, Source

COLS = ("category", "train_good", "test_good", "test_defective", "masks", "size")


def build(src: Source, mirror_root: Path, out_root: Path, max_side: int) -> dict[str, str]:
    snap = Snapshot(mirror_root, src)
    dest = out_root / src.category
    if dest.is_symlink() or not dest.exists():
        dest.unlink(missing_ok=True)
    else:
        shutil.rmtree(dest)
    if src.layout not in BUILDERS:
        raise SystemExit(f"{src.category}: layout {src.layout!r} unknown; expected one of {sorted(BUILDERS)}")
    max_side = src.max_side or max_side
    writer = Writer(dest, max_side)
    try:
        split_note = BUILDERS[src.layout](snap, src, writer)
    finally:
        snap.close()
    c = writer.counts
    defect = {k.split("/", 1)[1]: v for k, v in c.items() if k.startswith("test/") and k != "test/good"}
    sizes = ", ".join(f"{w}x{h}" for w, h in sorted(writer.sizes))
    counts = (c.get("train/good", 0), c.get("test/good", 0), sum(defect.values()), writer.masks)
    row = dict(zip(COLS, (src.category, *map(str, counts), sizes), strict=True))
    (dest / "SOURCE.txt").write_text(
        f"Category {src.category}, laid out by benchmarks/suite_data.py. Development use only; never commit images.\n"
        f"Source: github.com/{src.repo} @ {src.commit}, path {src.path or '.'}/\n"
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
    ap.add_argument("--mirror-root", type=Path, default=Path("../.mirror"),
                    help="where fetched snapshots live (default: beside the checkout)")
    ap.add_argument("--out", type=Path, default=Path("~/.cache/edge-somad/suite"))
    ap.add_argument("--shared", type=Path, default=None, help="also link the categories kept under this data folder")
    ap.add_argument("--max-side", type=int, default=512, help="longer side kept, unless a source sets its own")
    ap.add_argument("--only", nargs="+", default=None, metavar="CATEGORY",
                    help=f"lay out only these fetched categories: {' '.join(s.category for s in SOURCES)}")
    args = ap.parse_args(argv)
    known = {s.category for s in SOURCES}
    if args.only is not None and not set(args.only) <= known:
        print(f"error: --only {' '.join(sorted(set(args.only) - known))}: unknown; expected some of "
              f"{' '.join(sorted(known))}", file=sys.stderr)
        return 2
    out_root = args.out.expanduser()
    out_root.mkdir(parents=True, exist_ok=True)
    chosen = [s for s in SOURCES if args.only is None or s.category in args.only]
    rows = [build(src, args.mirror_root, out_root, args.max_side) for src in chosen]
    if args.shared is not None:
        rows += link_shared(args.shared, out_root)
    if not rows:
        return 0
    widths = [max(len(c), *(len(r[c]) for r in rows)) for c in COLS]
    for r in [dict(zip(COLS, COLS, strict=True)), *rows]:
        print("  ".join(r[c].ljust(w) for c, w in zip(COLS, widths, strict=True)).rstrip())
    print(f"suite root: {out_root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""benchmarks/suite_data.py: the source layouts turn tiny synthetic git snapshots into MVTec-layout categories."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # a folder of scripts, not a package

import suite_data
from suite_layouts import spread
from suite_sources import Source

RNG = np.random.default_rng(7)


def _snapshot(tmp_path: Path, files: dict[str, bytes]) -> tuple[Path, str]:
    """Commit ``files`` into a repository and clone it bare where Snapshot looks (<mirror>/o+r/repo)."""
    work = tmp_path / "work"
    for rel, data in files.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_bytes(data)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(work)], check=True)
    subprocess.run([*git, "-C", str(work), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-qm", "data"], check=True)
    commit = subprocess.run(["git", "-C", str(work), "rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    mirror = tmp_path / "mirror"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(mirror / "o+r" / "repo")], check=True)
    return mirror, commit


def _png(h: int = 20, w: int = 40, grey: bool = False) -> bytes:
    img = RNG.integers(0, 256, (h, w) if grey else (h, w, 3), dtype=np.uint8)  # noise: no two images alike
    return cv2.imencode(".png", img)[1].tobytes()


def _names(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.iterdir()) if folder.is_dir() else []


def _labelme(points: list[list[float]], h: int = 20, w: int = 40) -> bytes:
    shape = {"label": "Pitting", "points": points, "shape_type": "polygon"}
    return json.dumps({"imageHeight": h, "imageWidth": w, "shapes": [shape]}).encode()


def test_labelme_wear_splits_by_position_and_drops_frames_after_the_first_annotation(tmp_path: Path) -> None:
    box = [[10, 5], [19, 5], [19, 12], [10, 12]]
    files = {
        # position 100_000 (index 0 -> train): two clean frames, then pitting
        "data/01_t1_100_000_crop_2.jpg": _png(), "data/01_t2_100_000_crop_2.jpg": _png(),
        "data/01_t3_100_000_crop_2.jpg": _png(), "label/01_t3_100_000_crop_2.json": _labelme(box),
        # position 200_090 (index 1 -> test): one clean frame, pitting, then an unannotated frame
        "data/01_t1_200_090_crop_2.jpg": _png(), "data/01_t2_200_090_crop_2.jpg": _png(),
        "label/01_t2_200_090_crop_2.json": _labelme(box), "data/01_t3_200_090_crop_2.jpg": _png(),
        # another crop of the same position: not this subset; a copy in a subfolder: not a frame of the sequence
        "data/01_t1_200_090_crop_1.jpg": _png(), "data/BSD/test/01_t0_200_090_crop_2.jpg": _png(),
    }
    mirror, commit = _snapshot(tmp_path, files)
    src = Source(category="bs", repo="o/r", commit=commit, path="", licence="test", layout="labelme_wear",
                 subset="crop_2", max_side=1000)
    row = suite_data.build(src, mirror, tmp_path / "out", max_side=16)
    root = tmp_path / "out" / "bs"
    assert _names(root / "train" / "good") == ["01_t1_100_000_crop_2", "01_t2_100_000_crop_2"]
    assert _names(root / "test" / "good") == ["01_t1_200_090_crop_2"]
    assert _names(root / "test" / "pitting") == ["01_t2_200_090_crop_2"]
    assert (row["train_good"], row["test_good"], row["test_defective"], row["masks"]) == ("2", "1", "1", "1")
    mask = cv2.imread(str(root / "ground_truth" / "pitting" / "01_t2_200_090_crop_2_mask.png"), cv2.IMREAD_UNCHANGED)
    expected = np.zeros((20, 40), np.uint8)
    expected[5:13, 10:20] = 255  # the polygon's corners are inside it
    np.testing.assert_array_equal(mask, expected)
    assert row["size"] == "40x20"  # the source's own max_side (1000) wins over the option (16): kept native


def test_labelme_wear_refuses_an_annotation_of_another_size(tmp_path: Path) -> None:
    files = {"data/01_t1_100_000_crop_2.jpg": _png(), "data/01_t1_200_090_crop_2.jpg": _png(),
             "label/01_t1_200_090_crop_2.json": _labelme([[1, 1], [5, 1], [5, 5]], h=30, w=40)}
    mirror, commit = _snapshot(tmp_path, files)
    src = Source(category="bs", repo="o/r", commit=commit, path="", licence="test", layout="labelme_wear",
                 subset="crop_2")
    with pytest.raises(SystemExit, match="annotated size"):
        suite_data.build(src, mirror, tmp_path / "out", max_side=512)


def test_graded_csv_keeps_grades_0_and_1_of_one_subset_holds_out_every_5th_good_and_caps(tmp_path: Path) -> None:
    rows, files = [], {}
    for i in range(12):  # cells 0..11: grade 0 mono
        rows.append(f"images/c{i:02d}.png  0.0  mono")
    rows += ["images/c12.png  1.0  mono", "images/c13.png  1.0  mono", "images/c14.png  0.3333333333333333  mono",
             "images/c15.png  0.0  poly", "images/c16.png  1.0  poly"]
    for i in range(17):
        files[f"d/images/c{i:02d}.png"] = _png(16, 16, grey=True)
    files["d/labels.csv"] = ("\n".join(rows) + "\n").encode()
    mirror, commit = _snapshot(tmp_path, files)
    src = Source(category="cells", repo="o/r", commit=commit, path="d", licence="test", layout="graded_csv",
                 subset="mono", max_train=4, max_test_defective=1)
    row = suite_data.build(src, mirror, tmp_path / "out", max_side=512)
    root = tmp_path / "out" / "cells"
    assert _names(root / "test" / "good") == ["c04", "c09"]  # every 5th sorted good name
    assert _names(root / "train" / "good") == ["c00", "c02", "c06", "c08"]  # 4 evenly spaced of the other 10
    assert _names(root / "test" / "defective") == ["c12"]  # capped at 1; 1/3 and poly cells left out
    assert not (root / "ground_truth").exists() and row["masks"] == "0"
    assert "Licence: test" in (root / "SOURCE.txt").read_text(encoding="utf-8")


def test_graded_csv_rejects_a_row_that_names_no_file(tmp_path: Path) -> None:
    mirror, commit = _snapshot(tmp_path, {"d/labels.csv": b"images/missing.png 0.0 mono\n"})
    src = Source(category="cells", repo="o/r", commit=commit, path="d", licence="test", layout="graded_csv",
                 subset="mono")
    with pytest.raises(SystemExit, match="line 1"):
        suite_data.build(src, mirror, tmp_path / "out", max_side=512)


def test_spread_is_evenly_spaced_and_keeps_everything_below_the_cap() -> None:
    assert spread(list(range(10)), 5) == [0, 2, 4, 6, 8]
    assert spread(list(range(10)), 3) == [0, 3, 6]
    assert spread(list(range(4)), 10) == [0, 1, 2, 3]
    assert spread(list(range(4)), 0) == [0, 1, 2, 3]


def test_only_rejects_an_unknown_category(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert suite_data.main(["--out", str(tmp_path), "--only", "no_such_category"]) == 2
    assert "no_such_category" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def _rgba_mask(h: int, w: int, rows: slice, cols: slice) -> bytes:
    """A Ground Truth-style mask: class colour everywhere in a band, opaque only inside the labelled box."""
    mask = np.zeros((h, w, 4), np.uint8)
    mask[rows, :, :3] = (54, 164, 35)  # colour fringe beyond the box stays transparent
    mask[rows, cols, 3] = 255
    return cv2.imencode(".png", mask)[1].tobytes()


def test_gt_manifest_takes_labels_from_the_manifest_and_the_mask_from_the_alpha_channel(tmp_path: Path) -> None:
    meta = {"internal-color-map": {"0": {"class-name": "cracked", "hex-color": "#23A436"}}}
    lines = [{"source-ref": "training-images/normal-1.jpg", "anomaly-label": 0},
             {"source-ref": "training-images/normal-2.jpg", "anomaly-label": 0},
             {"source-ref": "training-images/normal-3.jpg", "anomaly-label": 0},
             {"source-ref": "training-images/anomaly-1.jpg", "anomaly-label": 1,
              "anomaly-mask-ref": "mask-images/anomaly-1.png", "anomaly-mask-ref-metadata": meta}]
    files = {f"c/dataset-files/{row['source-ref']}": _png() for row in lines}
    files["c/dataset-files/mask-images/anomaly-1.png"] = _rgba_mask(20, 40, slice(4, 9), slice(10, 30))
    files["c/dataset-files/manifests/template.manifest"] = "\n".join(json.dumps(r) for r in lines).encode()
    files["c/test-images/test-normal-1.jpg"] = _png()
    files["c/test-images/test-anomaly-1.jpg"] = _png()  # no mask: left out
    mirror, commit = _snapshot(tmp_path, files)
    src = Source(category="ck", repo="o/r", commit=commit, path="c", licence="test", layout="gt_manifest",
                 manifest="dataset-files/manifests/template.manifest", test_good="test-images/test-normal-",
                 max_train=2)
    suite_data.build(src, mirror, tmp_path / "out", max_side=512)
    root = tmp_path / "out" / "ck"
    assert _names(root / "train" / "good") == ["normal-1", "normal-2"]  # capped at 2
    assert _names(root / "test" / "good") == ["test-normal-1"]
    assert _names(root / "test") == ["cracked", "good"]
    mask = cv2.imread(str(root / "ground_truth" / "cracked" / "anomaly-1_mask.png"), cv2.IMREAD_UNCHANGED)
    expected = np.zeros((20, 40), np.uint8)
    expected[4:9, 10:30] = 255
    np.testing.assert_array_equal(mask, expected)


def test_gt_manifest_rejects_a_manifest_that_names_a_missing_image(tmp_path: Path) -> None:
    line = json.dumps({"source-ref": "training-images/gone.jpg", "anomaly-label": 0})
    mirror, commit = _snapshot(tmp_path, {"c/dataset-files/manifests/m.manifest": line.encode()})
    src = Source(category="ck", repo="o/r", commit=commit, path="c", licence="test", layout="gt_manifest",
                 manifest="dataset-files/manifests/m.manifest", test_good="test-images/test-normal-")
    with pytest.raises(SystemExit, match="line 1"):
        suite_data.build(src, mirror, tmp_path / "out", max_side=512)


def test_class_folders_hold_out_every_5th_good_and_keep_each_other_folder_as_a_defect_type(tmp_path: Path) -> None:
    files = {f"a/normal/{i}.png": _png() for i in range(10)}
    files |= {"a/anomaly/0.png": _png(), "a/scratch/0.png": _png(), "a/normal/nested/9.png": _png()}
    mirror, commit = _snapshot(tmp_path, files)
    src = Source(category="al", repo="o/r", commit=commit, path="a", licence="test", layout="class_folders",
                 subset="normal")
    row = suite_data.build(src, mirror, tmp_path / "out", max_side=512)
    root = tmp_path / "out" / "al"
    assert _names(root / "test" / "good") == ["4", "9"]
    assert _names(root / "train" / "good") == ["0", "1", "2", "3", "5", "6", "7", "8"]  # nested/ is not read
    assert _names(root / "test") == ["anomaly", "good", "scratch"]
    assert row["test_defective"] == "2" and row["masks"] == "0"

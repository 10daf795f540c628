"""Never a false pass: truncated, empty, undecodable and too small frames are `error` verdicts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_somad.contracts.manifest import load_manifest
from edge_somad.errors import InputError
from edge_somad.runtime.pipeline.frames import check_useful_size, encoded_image_problem, patch_stride, read_image_file
from tests.helpers.runtime import grey, make_model_dir
from tests.test_runtime_pipeline import run_pipeline_with_sub


def _textured(h: int = 120, w: int = 160) -> np.ndarray:
    """A grey part with mild texture: a real entropy-coded scan, and still a `pass` for the stand-in model."""
    rng = np.random.default_rng(0)
    return np.clip(128 + rng.normal(0, 6, (h, w, 1)), 0, 255).astype(np.uint8).repeat(3, axis=2)


def _encode(ext: str, img: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, img, params or [])
    assert ok
    return buf.tobytes()


COMPLETE = {
    "baseline.jpg": lambda: _encode(".jpg", _textured()),
    "progressive.jpg": lambda: _encode(".jpg", _textured(), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
    "restarts.jpg": lambda: _encode(".jpg", _textured(), [cv2.IMWRITE_JPEG_RST_INTERVAL, 2]),
    "trailing.jpg": lambda: _encode(".jpg", _textured()) + b"\x00\x00camera-trailer",  # data after EOI is fine
    "image.png": lambda: _encode(".png", _textured()),
    "image.bmp": lambda: _encode(".bmp", _textured()),
    "image.webp": lambda: _encode(".webp", _textured()),
}


@pytest.mark.parametrize("name", sorted(COMPLETE))
def test_complete_files_pass_the_check_and_every_cut_fails_it(name: str) -> None:
    data = COMPLETE[name]()
    assert encoded_image_problem(data) is None
    end = len(data) - (16 if name == "trailing.jpg" else 0)  # the trailer may be cut, the image not
    for frac in np.linspace(0.1, 0.9, 9):
        cut = data[: int(end * frac)]
        assert "truncated" in (encoded_image_problem(cut) or ""), (name, frac)
    assert "truncated" in (encoded_image_problem(data[: end - 1]) or "")


def test_empty_and_undecodable_files(tmp_path: Path) -> None:
    assert encoded_image_problem(b"") == "empty file (0 bytes)"
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "junk.tif").write_bytes(b"II*\x00 not really a tiff")
    assert read_image_file(tmp_path / "zero.jpg") == (None, "image zero.jpg: empty file (0 bytes)")
    img, why = read_image_file(tmp_path / "junk.tif")
    assert img is None and "declares no readable width and height" in why  # refused before decoding
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x00IEND\xaeB`\x82")
    img, why = read_image_file(tmp_path / "junk.png")  # whole, but no IHDR: nothing to decode
    assert img is None and "no readable width" in why


def test_minimum_useful_size_comes_from_the_model_geometry(tmp_path: Path) -> None:
    manifest = load_manifest(make_model_dir(tmp_path / "m"))  # 64x96 letterbox, no feature grid recorded
    assert patch_stride(manifest) == (4.0, 4.0)  # the backbone's stride-4 map grid
    for h, w in [(16, 24), (15, 24), (16, 23)]:  # letterbox: enlarged by min(64/h, 96/w) = 4, one pixel per patch
        check_useful_size(h, w, manifest)
    for h, w in [(1, 1), (15, 23), (2000, 10)]:  # 4.27x; 2000x10 letterboxes onto a 64x1 sliver
        with pytest.raises(InputError, match="minimum useful size"):
            check_useful_size(h, w, manifest)
    coarse = dataclasses.replace(manifest, model={"feature_grid": [8, 12]})  # a stride-8 map
    assert patch_stride(coarse) == (8.0, 8.0)
    check_useful_size(8, 12, coarse)
    with pytest.raises(InputError):
        check_useful_size(8, 12, manifest)


def test_folder_of_bad_files_gives_an_error_for_each_never_a_pass(tmp_path: Path) -> None:
    model_dir = make_model_dir(tmp_path / "m")
    folder = tmp_path / "imgs"
    folder.mkdir()
    jpg = _encode(".jpg", _textured())
    cv2.imwrite(str(folder / "00_good.png"), grey())
    cv2.imwrite(str(folder / "01_one_pixel.png"), grey(1, 1))
    cv2.imwrite(str(folder / "02_tiny.jpg"), grey(8, 8))
    (folder / "03_good.jpg").write_bytes(jpg)
    for i, frac in enumerate((0.1, 0.5, 0.9)):
        (folder / f"1{i}_cut.jpg").write_bytes(jpg[: int(len(jpg) * frac)])
    (folder / "20_zero.jpg").write_bytes(b"")
    (folder / "21_zero.png").write_bytes(b"")
    (folder / "22_cut.png").write_bytes(_encode(".png", _textured())[:500])
    (folder / "23_junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    # What the folder source used to do: imread fills the missing rows with grey and returns a "frame".
    assert cv2.imread(str(folder / "11_cut.jpg"), cv2.IMREAD_UNCHANGED).shape == (120, 160, 3)
    final, sub = run_pipeline_with_sub(model_dir, [f"d={folder}"])
    by_name = dict(zip(sorted(p.name for p in folder.iterdir()), sub.verdicts(), strict=True))
    assert {n: v["verdict"] for n, v in by_name.items() if v["verdict"] != "error"} == {
        "00_good.png": "pass", "03_good.jpg": "pass"}
    assert "minimum useful size" in by_name["01_one_pixel.png"]["error"]
    assert "minimum useful size" in by_name["02_tiny.jpg"]["error"]
    for n in ("10_cut.jpg", "11_cut.jpg", "12_cut.jpg", "22_cut.png", "23_junk.png"):
        assert "truncated" in by_name[n]["error"] and n in by_name[n]["error"], by_name[n]
    assert "empty file" in by_name["20_zero.jpg"]["error"] and "empty file" in by_name["21_zero.png"]["error"]
    assert final["verdicts"] == {"pass": 2, "fail": 0, "error": 9}

"""MVTec-layout loading, pixel decoding, data resolution and the (offline) download path."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_somad import data
from edge_somad.data import Sample
from edge_somad.errors import DatasetError

SHARED_HAZELNUT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hazelnut_toy"


def _write(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path


def _colour(h: int = 24, w: int = 32, value: int = 100) -> np.ndarray:
    img = np.full((h, w, 3), value, np.uint8)
    img[..., 2] = 200  # red channel differs, so a BGR/RGB swap would be visible
    return img


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A tiny category 'widget': 3 train, 2 good test, 2 'scratch' + 1 'dent' defects with masks."""
    cat = tmp_path / "widget"
    for name in ("b.png", "a.png", "c.jpg"):
        _write(cat / "train" / "good" / name, _colour())
    (cat / "train" / "good" / "notes.txt").write_text("not an image")
    _write(cat / "test" / "good" / "g1.png", _colour())
    _write(cat / "test" / "good" / "g0.bmp", _colour())
    mask = np.zeros((24, 32), np.uint8)
    mask[5:10, 8:20] = 255
    for kind, stems in (("scratch", ("s1", "s0")), ("dent", ("d0",))):
        for stem in stems:
            _write(cat / "test" / kind / f"{stem}.png", _colour())
            _write(cat / "ground_truth" / kind / f"{stem}_mask.png", mask)
    return tmp_path


def test_load_category_order_labels_masks(tree: Path) -> None:
    cat = data.load_category(tree, "widget")
    assert [p.name for p in cat.train] == ["a.png", "b.png", "c.jpg"]
    assert [(s.defect_type, s.path.name, s.label) for s in cat.test] == [
        ("dent", "d0.png", 1),
        ("good", "g0.bmp", 0),
        ("good", "g1.png", 0),
        ("scratch", "s0.png", 1),
        ("scratch", "s1.png", 1),
    ]
    for s in cat.test:
        assert (s.mask_path is None) == (s.label == 0)
        if s.mask_path is not None:
            assert s.mask_path.name == f"{s.path.stem}_mask.png"
    assert data.load_category(tree, "widget") == cat  # deterministic


def test_read_mask_values_and_resize(tree: Path) -> None:
    cat = data.load_category(tree, "widget")
    bad = next(s for s in cat.test if s.label == 1)
    m = data.read_mask(bad, (24, 32))
    assert m.dtype == bool and m.shape == (24, 32)
    assert m.sum() == 5 * 12 and m[5:10, 8:20].all()
    # An image twice the mask's size: nearest-neighbour upscale keeps it binary, 4x the area.
    big = data.read_mask(bad, (48, 64))
    assert big.shape == (48, 64) and big.sum() == 4 * 5 * 12 and big[10:20, 16:40].all()
    good = next(s for s in cat.test if s.label == 0)
    assert not data.read_mask(good, (7, 9)).any() and data.read_mask(good, (7, 9)).shape == (7, 9)
    with pytest.raises(DatasetError, match="no mask_path"):
        data.read_mask(Sample(bad.path, 1, "dent", None), (24, 32))


def test_read_image_formats(tmp_path: Path) -> None:
    colour = data.read_image(_write(tmp_path / "c.png", _colour()))
    assert colour.dtype == np.uint8 and colour.shape == (24, 32, 3)
    assert (colour[0, 0] == (100, 100, 200)).all()  # BGR kept
    grey = data.read_image(_write(tmp_path / "g.png", np.full((5, 6), 77, np.uint8)))
    assert grey.shape == (5, 6, 3) and (grey == 77).all()
    deep = np.array([[0, 257, 65535, 32896]], np.uint16)
    img16 = data.read_image(_write(tmp_path / "d.png", deep))
    assert img16.dtype == np.uint8 and img16[0, :, 0].tolist() == [0, 1, 255, 128]
    bgra = np.zeros((4, 4, 4), np.uint8)
    bgra[..., 0], bgra[..., 3] = 50, 10
    rgba = data.read_image(_write(tmp_path / "a.png", bgra))
    assert rgba.shape == (4, 4, 3) and (rgba[..., 0] == 50).all()


@pytest.mark.parametrize("content", [None, b"this is not a png"])
def test_read_image_unreadable_names_file(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "broken.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DatasetError, match=r"broken\.png"):
        data.read_image(path)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("no_category", "category folder"),
        ("no_train", "train/good is missing"),
        ("empty_train", "holds no images"),
        ("no_test", "test is missing"),
        ("no_mask", "has no mask"),
    ],
)
def test_layout_errors(tree: Path, breakage: str, message: str) -> None:
    import shutil

    cat = tree / "widget"
    name = "widget"
    if breakage == "no_category":
        name = "gadget"
    elif breakage == "no_train":
        shutil.rmtree(cat / "train")
    elif breakage == "empty_train":
        for p in (cat / "train" / "good").glob("*.*g"):
            p.unlink()
    elif breakage == "no_test":
        shutil.rmtree(cat / "test")
    else:
        (cat / "ground_truth" / "dent" / "d0_mask.png").unlink()
    with pytest.raises(DatasetError, match=message) as info:
        data.load_category(tree, name)
    assert "Expected MVTec layout" in str(info.value) and "holds" in str(info.value)


def test_embedded_sample_resolves_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # an empty cache
    cat = data.resolve_category(data.SAMPLE_CATEGORY, download=False)
    assert cat.root == data.sample_data_root() / "hazelnut_toy"
    assert len(cat.train) == 28 and len(cat.test) == 23
    assert sum(s.mask_path is not None for s in cat.test) == 17
    defect = next(s for s in cat.test if s.label == 1)
    img = data.read_image(defect.path)
    assert img.shape == (256, 256, 3)
    assert data.read_mask(defect, img.shape[:2]).any()
    assert (data.sample_data_root() / "ATTRIBUTION.md").is_file()


def test_resolve_order_env_and_explicit_root(
    tree: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(data.DATA_ENV, str(tree))
    assert data.resolve_category("widget").root == tree / "widget"
    with pytest.raises(DatasetError, match="not an MVTec AD category"):
        data.resolve_category("gadget")
    # An explicit root that lacks the category is an error, never a fall-back to the sample set.
    with pytest.raises(DatasetError, match="--data-root"):
        data.resolve_category("hazelnut_toy", data_root=tmp_path / "elsewhere")


@pytest.mark.skipif(not (SHARED_HAZELNUT / "hazelnut_toy").is_dir(), reason="shared hazelnut_toy copy absent")
def test_shared_full_size_hazelnut() -> None:
    cat = data.load_category(SHARED_HAZELNUT, "hazelnut_toy")
    assert (len(cat.train), len(cat.test)) == (28, 23)
    defect = next(s for s in cat.test if s.label == 1)
    img = data.read_image(defect.path)
    assert img.shape == (512, 512, 3) and data.read_mask(defect, img.shape[:2]).sum() > 0


# --- download path, never touching the network -------------------------------------------------


def _archive(tmp_path: Path, category: str, extra: tarfile.TarInfo | None = None) -> tuple[Path, str]:
    """A tar.xz holding CATEGORY/{train/good,test/good} with one PNG each (plus an optional member)."""
    ok, png = cv2.imencode(".png", _colour())
    assert ok
    payload = png.tobytes()
    path = tmp_path / f"{category}.tar.xz"
    with tarfile.open(path, "w:xz") as tar:
        for name in (f"{category}/train/good/000.png", f"{category}/test/good/000.png"):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        if extra is not None:
            tar.addfile(extra, io.BytesIO(b"x" * extra.size) if extra.isfile() else None)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_file_url_with_checksum(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive, digest = _archive(tmp_path, "bottle")
    dest = tmp_path / "cache"
    out = data.download_category("bottle", dest, url=archive.as_uri(), sha256=digest, progress=True)
    assert out == dest / "bottle"
    cat = data.load_category(dest, "bottle")
    assert len(cat.train) == 1 and cat.test[0].label == 0
    err = capsys.readouterr().err
    assert "CC BY-NC-SA" in err and "bottle.tar.xz [" in err  # licence notice and progress bar
    assert sorted(p.name for p in dest.iterdir()) == ["bottle"]  # temporary files cleaned up
    assert f"sha256: {digest}" in (out / "SOURCE.txt").read_text()


def test_download_checksum_mismatch(tmp_path: Path) -> None:
    archive, _ = _archive(tmp_path, "bottle")
    dest = tmp_path / "cache"
    with pytest.raises(DatasetError, match="corrupt: sha256"):
        data.download_category("bottle", dest, url=archive.as_uri(), sha256="0" * 64, progress=False)
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("kind", ["traversal", "absolute", "symlink"])
def test_download_rejects_unsafe_members(tmp_path: Path, kind: str) -> None:
    evil = tarfile.TarInfo(
        {"traversal": "../../evil.txt", "absolute": "/tmp/evil.txt"}.get(kind, "bottle/link")
    )
    if kind == "symlink":
        evil.type, evil.linkname = tarfile.SYMTYPE, "/etc/passwd"
    else:
        evil.size = 1
    archive, digest = _archive(tmp_path, "bottle", extra=evil)
    dest = tmp_path / "cache"
    with pytest.raises(DatasetError, match="refusing"):
        data.download_category("bottle", dest, url=archive.as_uri(), sha256=digest, progress=False)
    assert not (tmp_path / "evil.txt").exists() and list(dest.iterdir()) == []


def test_resolve_downloads_into_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive, _ = _archive(tmp_path, "bottle")
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setitem(data.MVTEC_ARCHIVES, "bottle", archive.as_uri())
    with pytest.raises(DatasetError, match="download disabled"):
        data.resolve_category("bottle", download=False)
    cat = data.resolve_category("bottle", progress=False)
    assert cat.root == tmp_path / "home" / ".cache" / "edge-somad" / "mvtec_ad" / "bottle"


def test_offline_download_says_where_to_put_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    def offline(url: str, timeout: float) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    with pytest.raises(DatasetError) as info:
        data.download_category("carpet", tmp_path / "cache", progress=False, opener=offline)
    msg = str(info.value)
    assert "--data-root DIR" in msg and "carpet/train/good" in msg and "CC BY-NC-SA" in msg
    assert ".cache/edge-somad/mvtec_ad" in msg


def test_image_level_set_without_ground_truth(tree: Path) -> None:
    """No ground_truth/ at all: an image-level set; evaluate reports image metrics, no pixel metrics."""
    import shutil

    from edge_somad.config import InputSpec
    from edge_somad.evaluate import compute_metrics, load_test_set

    shutil.rmtree(tree / "widget" / "ground_truth")
    cat = data.load_category(tree, "widget")
    assert [(s.label, s.mask_path) for s in cat.test if s.label] == [(1, None)] * 3
    ts = load_test_set(cat, InputSpec(32, 64, "letterbox"))
    assert ts.masks is None and ts.valid.shape == (5, 32, 64)
    # 24x32 -> 32x43 content at columns 10..52, padding either side
    assert ts.valid[0, :, 10:53].all() and not ts.valid[0, :, :10].any() and not ts.valid[0, :, 53:].any()
    scores = np.array([3.0, 1.0, 2.0, 4.0, 5.0])  # dent, good, good, scratch, scratch
    m = compute_metrics(ts, scores, np.zeros((5, 32, 64), np.float32))
    assert m["image_auroc"] == 1.0 and m["pixel_auroc"] is None and m["pro"] is None
    assert "image-level" in m["pixel_metrics"]


def test_partial_ground_truth_is_still_an_error(tree: Path) -> None:
    (tree / "widget" / "ground_truth" / "dent" / "d0_mask.png").unlink()
    with pytest.raises(DatasetError, match="has no mask"):
        data.load_category(tree, "widget")

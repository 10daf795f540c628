"""`--camera aravis:...` parsing and the pixel conversion, without a camera (Aravis not needed here).

The Bayer conversion is checked against mosaics built from the PFNC definition (BayerRG8: the first
row is R G R G..., the second G B G B...), from a picture of uniform colour patches, so the
reconstruction inside each patch is exact whatever the demosaicing does at the patch borders.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_somad.errors import ConfigError
from edge_somad.runtime.pipeline.gige_spec import PIXEL_CODES, GigESettings, parse_gige, pixel_name, to_bgr
from tests.helpers.aravis import require_aravis

# PFNC: the colour at (row % 2, col % 2) of each Bayer layout's top-left 2x2 cell.
LAYOUTS = {"BayerRG8": ("R", "G", "G", "B"), "BayerBG8": ("B", "G", "G", "R"),
           "BayerGR8": ("G", "R", "B", "G"), "BayerGB8": ("G", "B", "R", "G")}
CHANNEL = {"B": 0, "G": 1, "R": 2}  # index in a BGR pixel
REPO = Path(__file__).resolve().parents[1]


def patches() -> np.ndarray:
    """A BGR picture of 8x8-pixel patches, each its own colour with distinct B, G and R."""
    rng = np.random.default_rng(7)
    cells = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    return np.kron(cells, np.ones((8, 8, 1), np.uint8))


def mosaic(bgr: np.ndarray, layout: str) -> np.ndarray:
    """What a sensor with this PFNC layout records of the picture: one channel per pixel."""
    out = np.empty(bgr.shape[:2], np.uint8)
    for k, colour in enumerate(LAYOUTS[layout]):
        dy, dx = divmod(k, 2)
        out[dy::2, dx::2] = bgr[dy::2, dx::2, CHANNEL[colour]]
    return out


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_bayer_layouts_convert_to_the_colours_the_sensor_saw(layout: str) -> None:
    picture = patches()
    got = to_bgr(mosaic(picture, layout).tobytes(), picture.shape[1], picture.shape[0], layout)
    assert got.shape == picture.shape and got.dtype == np.uint8
    # Inside each patch (2 pixels from its borders) every demosaicing method must give the patch colour.
    inner = np.zeros(picture.shape[:2], bool)
    for y in range(0, picture.shape[0], 8):
        for x in range(0, picture.shape[1], 8):
            inner[y + 2:y + 6, x + 2:x + 6] = True
    np.testing.assert_array_equal(got[inner], picture[inner])
    # The same bytes read as another layout give other colours: the test can fail.
    other = "BayerBG8" if layout == "BayerRG8" else "BayerRG8"
    wrong = to_bgr(mosaic(picture, layout).tobytes(), picture.shape[1], picture.shape[0], other)
    assert not np.array_equal(wrong[inner], picture[inner])


def test_mono_and_rgb_conversions() -> None:
    rng = np.random.default_rng(1)
    mono = rng.integers(0, 256, size=(5, 7), dtype=np.uint8)
    assert (to_bgr(mono.tobytes(), 7, 5, "Mono8") == mono[..., None]).all()
    wide = rng.integers(0, 65536, size=(5, 7), dtype=np.uint16)
    got = to_bgr(wide.astype("<u2").tobytes(), 7, 5, "Mono16")
    assert (got == (wide.astype(np.float64) / 256).astype(np.uint8)[..., None]).all()  # the top byte
    rgb = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    assert (to_bgr(rgb.tobytes(), 7, 5, "RGB8") == rgb[..., ::-1]).all()
    assert (to_bgr(rgb.tobytes(), 7, 5, "BGR8") == rgb).all()
    with pytest.raises(ValueError, match="holds 34 bytes; a 7x5 image needs 35"):
        to_bgr(mono.tobytes()[:-1], 7, 5, "Mono8")


def test_pixel_codes_are_aravis_own() -> None:
    """The PFNC numbers here are the ones Aravis names (skips without Aravis, fails so under CI=true)."""
    assert pixel_name(0x01080009) == "BayerRG8" and pixel_name(0x12345678) is None
    require_aravis()
    from edge_somad.runtime.pipeline.gige import load_aravis

    Aravis = load_aravis()
    ours = {"Mono8": "MONO_8", "Mono16": "MONO_16", "BayerGR8": "BAYER_GR_8", "BayerRG8": "BAYER_RG_8",
            "BayerGB8": "BAYER_GB_8", "BayerBG8": "BAYER_BG_8", "RGB8": "RGB_8_PACKED", "BGR8": "BGR_8_PACKED"}
    assert {k: getattr(Aravis, f"PIXEL_FORMAT_{v}") for k, v in ours.items()} == PIXEL_CODES


def test_parse_full_and_empty() -> None:
    s = parse_gige("aravis:Basler-21234567?exposure_us=1500&gain_db=3.5&trigger=Software&pixel=bayerrg8")
    assert s == GigESettings(device="Basler-21234567", exposure_us=1500.0, gain_db=3.5, trigger="software",
                             pixel="BayerRG8")
    assert s.triggered
    first = parse_gige("aravis:")
    assert first == GigESettings() and not first.triggered and first.label == "aravis:<first camera>"
    assert parse_gige("aravis:192.168.10.20?fps=12.5&buffers=4&gain_raw=7").fps == 12.5


@pytest.mark.parametrize(("spec", "message"), [
    ("aravis:cam?exposure=100", "unknown key 'exposure'.*allowed: exposure_us"),
    ("aravis:cam?exposure_us=-5", r"exposure_us='-5'; expected a number >= 0.001"),
    ("aravis:cam?exposure_us=fast", r"exposure_us='fast'; expected a number"),
    ("aravis:cam?exposure_us=nan", r"exposure_us='nan'"),
    ("aravis:cam?gain_raw=1.5", r"gain_raw='1.5'; expected an integer >= 0"),
    ("aravis:cam?trigger=hardware", "trigger='hardware'; expected one of off, software, line0"),
    ("aravis:cam?pixel=YUV422", "pixel='YUV422'; expected one of Mono8, Mono16, BayerGR8"),
    ("aravis:cam?buffers=1", r"buffers='1'; expected an integer 2..64"),
    ("aravis:cam?gain_db=1&gain_raw=2", "gain_db and gain_raw both given"),
    ("aravis:cam?trigger=software&fps=10", "fps=10 with trigger=software"),
    ("aravis:cam?gain_db=1&gain_db=2", "gain_db given twice"),
    ("aravis:cam?gain_db=", "gain_db has no value"),
    ("aravis:cam?gain_db", "gain_db has no value"),
    ("aravis:my cam", "device id 'my cam'"),
])
def test_parse_errors_name_what_arrived_and_what_is_allowed(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_gige(spec)


def test_no_gi_import_unless_an_aravis_camera_is_used() -> None:
    """Other sources, the runtime's modules and a bad aravis spec never import gi (PyGObject)."""
    script = (
        "import sys\n"
        "import edge_somad.cli.runtime, edge_somad.runtime.pipeline.camera as c, edge_somad.runtime.pipeline.pipeline\n"
        "c.parse_source('0')\n"
        "try:\n"
        "    c.parse_source('aravis:x?bad=1')\n"
        "except Exception as e:\n"
        "    print(type(e).__name__)\n"
        "print('gi' in sys.modules)\n"
    )
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["ConfigError", "False"]


def test_missing_aravis_says_how_to_install_it() -> None:
    """Where PyGObject is absent (simulated: the import of gi fails) the error names the packages."""
    script = (
        "import sys\n"
        "sys.modules['gi'] = None\n"
        "from edge_somad.runtime.pipeline.camera import parse_cameras\n"
        "try:\n"
        "    parse_cameras(['line1=aravis:?trigger=software'])\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ConfigError PyGObject (module gi) is not installed"), res.stdout
    for needed in ("apt-get install aravis-tools gir1.2-aravis-0.8", "pip install 'edge-somad[gige]'"):
        assert needed in res.stdout

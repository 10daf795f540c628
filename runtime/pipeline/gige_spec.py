"""`--camera aravis:<device>?key=value&...`: a GigE Vision / USB3 Vision camera's settings, and its pixels.

Pure Python (numpy and cv2 only): parsing and pixel conversion work, and are tested, without Aravis.
runtime/pipeline/gige.py opens the camera through Aravis (PyGObject) and applies these settings.

Syntax: `aravis:` (the first camera found) or `aravis:<device id>` (what `arv-camera-test-0.8` or the
vendor's tool names: `Basler-21234567`, an IP address such as `192.168.10.20`, `Aravis-Fake-GV01`),
then optionally `?key=value&key=value`. A key left out leaves the camera's own setting as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import cv2
import numpy as np

from edge_somad.errors import ConfigError

PREFIX = "aravis:"
TRIGGERS = ("off", "software", "line0", "line1", "line2", "line3", "line4", "line5", "line6", "line7")
# PFNC (GenICam Pixel Format Naming Convention) codes: what a GigE Vision buffer says it carries.
PIXEL_CODES = {
    "Mono8": 0x01080001, "Mono16": 0x01100007,
    "BayerGR8": 0x01080008, "BayerRG8": 0x01080009, "BayerGB8": 0x0108000A, "BayerBG8": 0x0108000B,
    "RGB8": 0x02180014, "BGR8": 0x02180015,
}
PIXEL_FORMATS = tuple(PIXEL_CODES)
_NAMES = {code: name for name, code in PIXEL_CODES.items()}
# PFNC names a Bayer layout by its top-left 2x2 cell read row by row (BayerRG8: R G / G B).
# OpenCV's historic codes name it by the second row's second and third pixels, one cell off, so
# PFNC BayerRG is cv2.COLOR_BayerBG2BGR. The RGGB-style aliases (OpenCV >= 4.5) name the top-left
# cell like PFNC; tests/test_gige.py checks them against a mosaic built from the PFNC definition.
_BAYER = {
    "BayerRG8": cv2.COLOR_BayerRGGB2BGR, "BayerBG8": cv2.COLOR_BayerBGGR2BGR,
    "BayerGR8": cv2.COLOR_BayerGRBG2BGR, "BayerGB8": cv2.COLOR_BayerGBRG2BGR,
}
_DEVICE = re.compile(r"[A-Za-z0-9_.:\-]*")
INSTALL_HINT = (
    "GigE Vision / USB3 Vision cameras need Aravis and PyGObject. On Debian/Ubuntu, as root: "
    "apt-get install aravis-tools gir1.2-aravis-0.8 libgirepository1.0-dev libcairo2-dev pkg-config; "
    "then in this environment: pip install 'edge-somad[gige]' (docs/cameras.md)."
)
_KEYS = {
    "exposure_us": "exposure time in microseconds (> 0): GenICam ExposureTime or ExposureTimeAbs",
    "gain_db": "analog gain in dB (>= 0): GenICam Gain",
    "gain_raw": "gain in the camera's own units (integer >= 0): GenICam GainRaw, for cameras without Gain",
    "trigger": "off (free running) | software | line0..line7 (a hardware trigger input)",
    "pixel": "|".join(PIXEL_FORMATS),
    "fps": "frame rate of a free-running camera (> 0): GenICam AcquisitionFrameRate",
    "buffers": "frames in the stream's buffer pool (2..64, default 8)",
    "timeout_ms": "how long one wait for a frame lasts before stop and loss are checked (10..5000, default 200)",
}


@dataclass(frozen=True)
class GigESettings:
    """What `--camera aravis:...` asked for; None: leave the camera's own setting."""

    device: str = ""  # "": the first camera Aravis finds
    exposure_us: float | None = None
    gain_db: float | None = None
    gain_raw: int | None = None
    trigger: str | None = None  # None | off | software | lineN
    pixel: str | None = None
    fps: float | None = None
    buffers: int = 8
    timeout_ms: int = 200

    @property
    def triggered(self) -> bool:
        """A triggered camera sends a frame per trigger: a gap between parts is not a stall."""
        return self.trigger not in (None, "off")

    @property
    def label(self) -> str:
        return f"aravis:{self.device or '<first camera>'}"


def is_gige(spec: str) -> bool:
    return spec.strip().lower().startswith(PREFIX)


def _number(key: str, raw: str, kind: type, low: float, high: float | None) -> float | int:
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not np.isfinite(value) or value < low or (high is not None and value > high):
        span = f">= {low:g}" if high is None else f"{low:g}..{high:g}"
        raise ConfigError(f"aravis camera: {key}={raw!r}; expected {'an integer' if kind is int else 'a number'} "
                          f"{span} ({_KEYS[key]})")
    return value


def parse_gige(spec: str) -> GigESettings:
    """`aravis:<device>?k=v&k=v` -> GigESettings; every key and value checked, nothing guessed."""
    s = spec.strip()
    if not is_gige(s):
        raise ConfigError(f"{spec!r} is not an Aravis camera; expected aravis:<device id>?key=value&...")
    device, _, query = s[len(PREFIX):].partition("?")
    if not _DEVICE.fullmatch(device):
        raise ConfigError(f"aravis camera device id {device!r}: expected letters, digits and . _ - : only "
                          "(e.g. Basler-21234567 or 192.168.10.20), or nothing for the first camera found")
    got: dict[str, str] = {}
    for part in query.split("&") if query else []:
        key, sep, value = part.partition("=")
        if key not in _KEYS:
            allowed = ", ".join(f"{k} ({v})" for k, v in _KEYS.items())
            raise ConfigError(f"aravis camera: unknown key {key!r} in {spec!r}; allowed: {allowed}")
        if not sep or not value:
            raise ConfigError(f"aravis camera: {key} has no value in {spec!r}; expected {key}=<{_KEYS[key]}>")
        if key in got:
            raise ConfigError(f"aravis camera: {key} given twice in {spec!r} ({got[key]!r} and {value!r})")
        got[key] = value
    out: dict[str, object] = {"device": device}
    if "exposure_us" in got:
        out["exposure_us"] = _number("exposure_us", got["exposure_us"], float, 1e-3, None)
    if "gain_db" in got:
        out["gain_db"] = _number("gain_db", got["gain_db"], float, 0.0, None)
    if "gain_raw" in got:
        out["gain_raw"] = _number("gain_raw", got["gain_raw"], int, 0, None)
    if "gain_db" in got and "gain_raw" in got:
        raise ConfigError("aravis camera: gain_db and gain_raw both given; give one (gain_db for cameras with "
                          "GenICam Gain, gain_raw for those with GainRaw only)")
    if "fps" in got:
        out["fps"] = _number("fps", got["fps"], float, 1e-3, 10000.0)
    if "buffers" in got:
        out["buffers"] = _number("buffers", got["buffers"], int, 2, 64)
    if "timeout_ms" in got:
        out["timeout_ms"] = _number("timeout_ms", got["timeout_ms"], int, 10, 5000)
    if "trigger" in got:
        if got["trigger"].lower() not in TRIGGERS:
            raise ConfigError(f"aravis camera: trigger={got['trigger']!r}; expected one of {', '.join(TRIGGERS)}")
        out["trigger"] = got["trigger"].lower()
    if "pixel" in got:
        names = {n.lower(): n for n in PIXEL_FORMATS}
        if got["pixel"].lower() not in names:
            raise ConfigError(f"aravis camera: pixel={got['pixel']!r}; expected one of {', '.join(PIXEL_FORMATS)} "
                              "(the formats converted to BGR here; the camera must offer it too)")
        out["pixel"] = names[got["pixel"].lower()]
    settings = GigESettings(**out)  # type: ignore[arg-type]
    if settings.fps is not None and settings.triggered:
        raise ConfigError(f"aravis camera: fps={got['fps']} with trigger={settings.trigger}; a triggered camera "
                          "takes one frame per trigger. Leave fps out, or use trigger=off.")
    return settings


def pixel_name(code: int) -> str | None:
    return _NAMES.get(code)


def to_bgr(data: bytes | np.ndarray, width: int, height: int, pixel: str) -> np.ndarray:
    """One camera buffer -> HxWx3 uint8 BGR, as the scorer takes it.

    Mono16 keeps its top byte (value >> 8): a 16-bit sample's full range maps to 0..255. Cameras
    that put 10 or 12 significant bits in a 16-bit word look dark this way: use Mono8 with them.
    """
    raw = np.frombuffer(data, np.uint8)
    depth = {"Mono16": 2, "RGB8": 3, "BGR8": 3}.get(pixel, 1)
    if pixel not in PIXEL_CODES:
        raise ConfigError(f"camera sent pixel format {pixel!r}; supported: {', '.join(PIXEL_FORMATS)}")
    if raw.size < width * height * depth:
        raise ValueError(f"{pixel} buffer holds {raw.size} bytes; a {width}x{height} image needs "
                         f"{width * height * depth}")
    raw = raw[: width * height * depth]
    if pixel == "Mono16":
        grey = (raw.view("<u2").reshape(height, width) >> 8).astype(np.uint8)
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    if pixel == "Mono8":
        return cv2.cvtColor(raw.reshape(height, width), cv2.COLOR_GRAY2BGR)
    if pixel == "RGB8":
        return cv2.cvtColor(raw.reshape(height, width, 3), cv2.COLOR_RGB2BGR)
    if pixel == "BGR8":
        return raw.reshape(height, width, 3).copy()
    return cv2.cvtColor(raw.reshape(height, width), _BAYER[pixel])

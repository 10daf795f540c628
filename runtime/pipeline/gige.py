"""A GigE Vision / USB3 Vision camera through Aravis: GenICam features set, frames from a stream + buffer pool.

Aravis (C, through PyGObject) is imported only here and only when an `aravis:` camera is asked for,
so every other source, and `--help`, works without it; where it is missing the error says how to
install it. The camera is opened, the settings of `--camera aravis:...` are written to its GenICam
features (ExposureTime or ExposureTimeAbs, Gain or GainRaw, TriggerSelector/TriggerMode/TriggerSource,
PixelFormat, AcquisitionFrameRate) and read back; a feature the camera lacks, or a value it refuses, is
a CameraError naming the feature, the value and what the camera offers. Frames come from an Aravis
stream fed with a pool of `buffers` preallocated buffers, each pushed back as soon as it is converted
to BGR. A camera that stops answering makes Aravis emit `control-lost` (its heartbeat failed): the
next read() reports it and CameraSource reconnects with backoff, publishing the camera events.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from edge_somad.errors import CameraError, ConfigError
from edge_somad.runtime.pipeline.gige_spec import INSTALL_HINT, PIXEL_FORMATS, GigESettings, pixel_name, to_bgr

log = logging.getLogger(__name__)


def load_aravis() -> Any:
    """The Aravis 0.8 module (gi.repository.Aravis), or a ConfigError saying how to install it."""
    try:
        import gi
    except ImportError as exc:
        raise ConfigError(f"PyGObject (module gi) is not installed here. {INSTALL_HINT}") from exc
    try:
        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis
    except (ValueError, ImportError) as exc:
        raise ConfigError(f"Aravis 0.8 is not installed ({exc}). {INSTALL_HINT}") from exc
    return Aravis


def _glib_error() -> type[BaseException]:
    from gi.repository import GLib

    return GLib.Error


class _Features:
    """GenICam feature access with errors that name the camera, the feature and what it offers."""

    def __init__(self, camera: Any, label: str) -> None:
        self.device, self.label, self._error = camera.get_device(), label, _glib_error()

    def has(self, name: str) -> bool:
        return self.device.get_feature(name) is not None

    def choices(self, name: str) -> list[str]:
        return list(self.device.dup_available_enumeration_feature_values_as_strings(name) or [])

    def need(self, *names: str, key: str) -> str:
        """The first of `names` this camera has, else a CameraError for the `--camera` key."""
        for name in names:
            if self.has(name):
                return name
        raise CameraError(f"camera {self.label} has no GenICam feature {' or '.join(names)}, so {key}= cannot be "
                          "applied; leave it out of --camera, or set it with the camera vendor's tool")

    def enum(self, name: str, value: str, key: str | None) -> None:
        """key: the --camera key that asked for it; None: a setting edge-somad itself needs."""
        offered = self.choices(name)
        if value not in offered:
            origin = f"from {key}=" if key else "needed by edge-somad"
            raise CameraError(f"camera {self.label}: {name} {value!r} ({origin}) is not offered; this camera "
                              f"offers {name} {', '.join(offered) or 'nothing'}")
        self._set(name, value, self.device.set_string_feature_value)

    def number(self, name: str, value: float, key: str, integer: bool = False) -> None:
        get_bounds = self.device.get_integer_feature_bounds if integer else self.device.get_float_feature_bounds
        low, high = get_bounds(name)
        if not low <= value <= high:
            raise CameraError(f"camera {self.label}: {key}={value:g} is outside {name}'s range {low:g}..{high:g}")
        setter = self.device.set_integer_feature_value if integer else self.device.set_float_feature_value
        self._set(name, int(value) if integer else float(value), setter)

    def _set(self, name: str, value: object, setter: Any) -> None:
        try:
            setter(name, value)
        except self._error as exc:
            raise CameraError(f"camera {self.label} refused {name} = {value!r}: {exc.message}") from exc

    def read(self, name: str) -> object:
        node = self.device.get_feature(name)
        kind = type(node).__name__
        if "Enumeration" in kind or "String" in kind:
            return self.device.get_string_feature_value(name)
        if "Float" in kind:
            return self.device.get_float_feature_value(name)
        if "Boolean" in kind:
            return self.device.get_boolean_feature_value(name)
        return self.device.get_integer_feature_value(name)


def configure(camera: Any, settings: GigESettings) -> dict[str, object]:
    """Write the settings to the camera's GenICam features; returns what the camera reads back."""
    f = _Features(camera, settings.label)
    if f.has("AcquisitionMode") and "Continuous" in f.choices("AcquisitionMode"):
        f.enum("AcquisitionMode", "Continuous", None)  # one stream, frames until stopped
    if settings.pixel is not None:
        f.enum(f.need("PixelFormat", key="pixel"), settings.pixel, "pixel")
    if settings.trigger is not None:
        _trigger(f, settings.trigger)
    if settings.exposure_us is not None:
        name = f.need("ExposureTime", "ExposureTimeAbs", key="exposure_us")
        if f.has("ExposureAuto"):
            f.enum("ExposureAuto", "Off", "exposure_us")  # else the camera overrides what was asked
        f.number(name, settings.exposure_us, "exposure_us")
    if settings.gain_db is not None:
        _gain(f, "gain_db", settings.gain_db)
    if settings.gain_raw is not None:
        _gain(f, "gain_raw", settings.gain_raw)
    if settings.fps is not None:
        name = f.need("AcquisitionFrameRate", "AcquisitionFrameRateAbs", key="fps")
        if f.has("AcquisitionFrameRateEnable"):
            f._set("AcquisitionFrameRateEnable", True, f.device.set_boolean_feature_value)
        f.number(name, settings.fps, "fps")
    sent = f.read("PixelFormat") if f.has("PixelFormat") else None
    if sent not in PIXEL_FORMATS:
        raise CameraError(f"camera {settings.label} sends PixelFormat {sent!r}, which is not converted here; give "
                          f"pixel= one of {', '.join(p for p in PIXEL_FORMATS if p in f.choices('PixelFormat'))}")
    names = ("PixelFormat", "Width", "Height", "ExposureTime", "ExposureTimeAbs", "Gain", "GainRaw",
             "TriggerSelector", "TriggerMode", "TriggerSource", "AcquisitionFrameRate", "AcquisitionFrameRateAbs")
    return {name: f.read(name) for name in names if f.has(name)}


# --camera key -> (its GenICam feature, that feature as named in errors, the other gain key's feature and
# how to ask for it instead). Cameras offer one or both: Gain in dB (SFNC) or GainRaw in their own units.
_GAINS = {"gain_db": ("Gain", "Gain (dB)", "GainRaw", "GainRaw (its own units): give gain_raw="),
          "gain_raw": ("GainRaw", "GainRaw", "Gain", "Gain (dB): give gain_db=")}


def _gain(f: _Features, key: str, value: float) -> None:
    """Gain auto off, then the gain the --camera key asks for; an error names the other key when the
    camera has that feature instead."""
    feature, named, other, ask = _GAINS[key]
    if not f.has(feature):
        alt = f" It has {ask} instead." if f.has(other) else ""
        raise CameraError(f"camera {f.label} has no GenICam feature {named}, so {key}= cannot be applied.{alt}")
    if f.has("GainAuto"):
        f.enum("GainAuto", "Off", key)
    f.number(feature, value, key, integer=key == "gain_raw")


def _trigger(f: _Features, trigger: str) -> None:
    """FrameStart trigger from `Software` or `Line<N>`, every other trigger off; or all off."""
    f.need("TriggerMode", key="trigger")
    selectors = f.choices("TriggerSelector") if f.has("TriggerSelector") else []
    for selector in selectors:  # an AcquisitionStart trigger left on would hold every frame back
        f.enum("TriggerSelector", selector, "trigger")
        f.enum("TriggerMode", "Off", "trigger")
    if trigger == "off":
        return
    if selectors:
        f.enum("TriggerSelector", "FrameStart", "trigger")
    source = "Software" if trigger == "software" else f"Line{trigger[4:]}"
    f.enum(f.need("TriggerSource", key="trigger"), source, "trigger")
    if trigger == "software":
        f.need("TriggerSoftware", key="trigger")
    f.enum("TriggerMode", "On", "trigger")


class GigECapture:
    """An open Aravis camera, acquiring into a stream; what CameraSource reads from."""

    def __init__(self, settings: GigESettings) -> None:
        self.settings = settings
        aravis = load_aravis()
        error = _glib_error()
        self._lost = threading.Event()
        self.last_frame_id: int | None = None  # the camera's own frame counter, for tests and logs
        try:
            self.camera = aravis.Camera.new(settings.device or None)
        except error as exc:
            raise CameraError(f"cannot open camera {settings.label}: {exc.message}") from exc
        self._device = self.camera.get_device()
        # Emitted from Aravis's heartbeat thread when the camera stops answering.
        self._handler = self._device.connect("control-lost", lambda _device: self._lost.set())
        self.stream: Any = None
        try:
            self.applied = configure(self.camera, settings)
            self.stream = self.camera.create_stream(None, None)
            payload = self.camera.get_payload()
            for _ in range(settings.buffers):
                self.stream.push_buffer(aravis.Buffer.new_allocate(payload))
            self.camera.start_acquisition()
        except error as exc:
            self.release()
            raise CameraError(f"camera {settings.label}: cannot start acquisition: {exc.message}") from exc
        except BaseException:
            self.release()
            raise
        self._ok, self._cleared = aravis.BufferStatus.SUCCESS, aravis.BufferStatus.CLEARED
        self.cleared = 0  # buffers the stream handed back empty (no frame captured into them)
        log.info("camera %s: %s", settings.label, self.applied)

    def opened(self) -> bool:
        return True

    def read(self) -> tuple[str, np.ndarray | None, str | None]:
        """One wait of timeout_ms for a buffer; see capture.Capture for what comes back."""
        if self._lost.is_set():
            return "error", None, f"camera {self.settings.label} lost (no answer to the heartbeat)"
        buffer = self.stream.timeout_pop_buffer(self.settings.timeout_ms * 1000)
        if buffer is None:
            if self._lost.is_set():
                return "error", None, f"camera {self.settings.label} lost (no answer to the heartbeat)"
            return "idle", None, None
        try:
            status = buffer.get_status()
            if status == self._cleared:  # handed back without a frame in it: nothing was captured
                self.cleared += 1
                log.debug("camera %s: buffer returned empty (cleared), %d so far", self.settings.label, self.cleared)
                return "idle", None, None
            if status != self._ok:
                return "corrupt", None, f"incomplete frame from camera {self.settings.label}: {status.value_nick}"
            code = buffer.get_image_pixel_format()
            pixel = pixel_name(code)
            if pixel is None:
                return "corrupt", None, (f"camera {self.settings.label} sent pixel format 0x{code:08x}; supported: "
                                         f"{', '.join(PIXEL_FORMATS)}")
            self.last_frame_id = buffer.get_frame_id()
            image = to_bgr(buffer.get_data(), buffer.get_image_width(), buffer.get_image_height(), pixel)
            return "frame", image, None
        except ValueError as exc:
            return "corrupt", None, f"frame from camera {self.settings.label}: {exc}"
        finally:
            self.stream.push_buffer(buffer)  # back into the pool: the camera can fill it again

    def software_trigger(self) -> None:
        """One frame now (trigger=software); CameraError when the camera cannot take it."""
        if self.settings.trigger != "software":
            raise ConfigError(f"camera {self.settings.label} has trigger={self.settings.trigger or 'unset'}; "
                              "software_trigger() needs trigger=software in --camera")
        if self._lost.is_set():
            raise CameraError(f"camera {self.settings.label} is lost; no frame can be taken now")
        camera = self.camera
        if camera is None:
            raise CameraError(f"camera {self.settings.label} is closed; no frame can be taken now")
        try:
            camera.software_trigger()
        except _glib_error() as exc:
            raise CameraError(f"camera {self.settings.label}: software trigger failed: {exc.message}") from exc

    def release(self) -> None:
        """Stop acquiring and let the camera go (skipped on a lost camera: each write would time out)."""
        camera, self.camera = getattr(self, "camera", None), None
        if camera is None:
            return
        if getattr(self, "_handler", None) is not None:
            self._device.disconnect(self._handler)
            self._handler = None
        if not self._lost.is_set():
            try:
                camera.stop_acquisition()
            except _glib_error() as exc:
                log.info("camera %s: stop_acquisition: %s", self.settings.label, exc.message)
        # Drop every reference now: the device gives up the camera's control channel when it is
        # freed, and a reconnect (or another program) cannot configure the camera before that.
        self.stream = self._device = camera = None

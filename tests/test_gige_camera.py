"""The Aravis camera source against Aravis's own simulated GigE Vision camera (arv-fake-gv-camera-0.8).

What the simulated camera draws is known (Aravis 0.8's fake camera): pixel (x, y) of frame f holds
v = (x + y + f) % 255 scaled by s = 1 + GainRaw + log10(ExposureTimeAbs / 10000), clamped; Mono16
holds (256 * (x + y + f)) % 65535 * s; the colour formats map the scaled v through a jet colour table
whose entry 0 is (R, G, B) = (0, 0, 132). So the expected pictures below are computed here, in float64,
from the frame's own counter and the settings, independently of the code under test.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edge_somad.errors import CameraError, ConfigError
from edge_somad.runtime.pipeline.camera import CameraEvent, CameraSource, parse_source
from edge_somad.runtime.pipeline.gige import GigECapture, load_aravis
from edge_somad.runtime.pipeline.gige_spec import PIXEL_CODES
from tests.helpers.aravis import ADDRESS, FakeCamera, require_aravis
from tests.helpers.poll import wait_until

W = H = 512  # the simulated camera's default region


def open_camera(query: str) -> GigECapture:
    return GigECapture(parse_source(f"aravis:{ADDRESS}?{query}").gige)


def next_frame(cap: GigECapture, timeout_s: float = 5.0) -> np.ndarray:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        kind, img, why = cap.read()
        assert kind in ("frame", "idle"), why
        if kind == "frame":
            return img
    raise AssertionError(f"no frame within {timeout_s} s")


def frames_within(cap: GigECapture, seconds: float) -> int:
    """Frames delivered in a window: for 'none without a trigger' a window is what there is to watch."""
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        kind, _, why = cap.read()
        assert kind in ("frame", "idle"), why
        n += kind == "frame"
    return n


def ramp(frame_id: int, scale: float = 1.0) -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    return np.clip(((x + y + frame_id) % 255) * scale, 0, 255)


def test_frames_arrive_with_the_expected_size_and_picture(fake_camera: FakeCamera) -> None:
    cap = open_camera("pixel=Mono8&exposure_us=10000&gain_raw=0")
    try:
        img = next_frame(cap)
        assert img.shape == (H, W, 3) and img.dtype == np.uint8
        expected = ramp(cap.last_frame_id).astype(np.uint8)
        for c in range(3):
            np.testing.assert_array_equal(img[..., c], expected)
    finally:
        cap.release()


def test_exposure_and_gain_are_applied_read_back_and_seen_in_the_picture(fake_camera: FakeCamera) -> None:
    cap = open_camera("pixel=Mono8&exposure_us=20000&gain_raw=1")
    try:
        assert cap.applied["ExposureTimeAbs"] == 20000.0 and cap.applied["GainRaw"] == 1
        # Read back by another client of the camera's registers, not from what we wrote.
        device = cap.camera.get_device()
        assert device.get_float_feature_value("ExposureTimeAbs") == 20000.0
        assert device.get_integer_feature_value("GainRaw") == 1
        img = next_frame(cap)
        scale = 1 + 1 + np.log10(20000 / 10000)
        np.testing.assert_allclose(img[..., 0], np.trunc(ramp(cap.last_frame_id, scale)), atol=1)
        assert not np.array_equal(img[..., 0], ramp(cap.last_frame_id).astype(np.uint8))  # gain changed it
    finally:
        cap.release()


def test_mono16_keeps_the_top_byte(fake_camera: FakeCamera) -> None:
    cap = open_camera("pixel=Mono16&exposure_us=10000&gain_raw=0")
    try:
        img = next_frame(cap)
        y, x = np.mgrid[0:H, 0:W].astype(np.int64)
        wide = (256 * (x + y + cap.last_frame_id)) % 65535
        np.testing.assert_array_equal(img[..., 2], (wide // 256).astype(np.uint8))
    finally:
        cap.release()


@pytest.mark.parametrize("pixel", ["BayerGR8", "BayerGB8", "RGB8"])
def test_colour_formats_give_the_colour_the_camera_drew(fake_camera: FakeCamera, pixel: str) -> None:
    """At the shortest exposure the scale is 1 + 0 + log10(10/10000) = -2: every pixel is jet entry 0,
    pure blue (R, G, B) = (0, 0, 132); the Bayer frame, demosaiced, must be blue too, not red."""
    cap = open_camera(f"pixel={pixel}&exposure_us=10&gain_raw=0")
    try:
        img = next_frame(cap)
        inner = img[2:-2, 2:-2].reshape(-1, 3)
        assert (inner == (132, 0, 0)).all(), np.unique(inner, axis=0)[:5]
    finally:
        cap.release()


def test_simulated_camera_swaps_its_rg_and_bg_layouts(fake_camera: FakeCamera) -> None:
    """Why BayerRG8 and BayerBG8 are not checked against the simulated camera: in Aravis 0.8 it writes
    its BayerRG8 frames in the BG layout (blue at the top-left pixel, where PFNC puts red) and vice
    versa; GR and GB follow PFNC. Our conversion follows PFNC (tests/test_gige_spec.py). Should a later
    Aravis fix this, this test fails: then add the two to the test above."""
    aravis = load_aravis()
    camera = aravis.Camera.new(ADDRESS)
    try:
        camera.get_device().set_float_feature_value("ExposureTimeAbs", 10.0)
        stream = camera.create_stream(None, None)  # one stream: the 8-bit layouts share a payload size
        # Where the blue sample sits in the 2x2 cell: PFNC says RG (1, 1), BG (0, 0), GR (1, 0).
        for pixel, blue_at in (("BayerRG8", (0, 0)), ("BayerBG8", (1, 1)), ("BayerGR8", (1, 0))):
            camera.get_device().set_string_feature_value("PixelFormat", pixel)
            camera.start_acquisition()
            deadline, data = time.monotonic() + 5, b""
            while not data and time.monotonic() < deadline:  # a complete frame (not one cut by a restart)
                stream.push_buffer(aravis.Buffer.new_allocate(camera.get_payload()))
                buffer = stream.timeout_pop_buffer(1_000_000)
                if (buffer is not None and buffer.get_status() == aravis.BufferStatus.SUCCESS
                        and buffer.get_image_pixel_format() == PIXEL_CODES[pixel]):  # not one sent before the change
                    data = buffer.get_data()
            camera.stop_acquisition()
            assert len(data) == H * W, pixel
            cell = np.frombuffer(data, np.uint8).reshape(H, W)[:2, :2]
            assert [tuple(int(i) for i in p) for p in np.argwhere(cell == 132)] == [blue_at], (pixel, cell)
    finally:
        del stream, camera


def test_software_trigger_gives_one_frame_per_trigger_and_none_without(fake_camera: FakeCamera) -> None:
    cap = open_camera("pixel=Mono8&trigger=software")
    try:
        assert (cap.applied["TriggerMode"], cap.applied["TriggerSource"]) == ("On", "Software")
        assert frames_within(cap, 1.0) == 0  # free running it would have sent 25
        ids = []
        for _ in range(5):
            cap.software_trigger()
            next_frame(cap)
            ids.append(cap.last_frame_id)
            assert frames_within(cap, 0.3) == 0  # exactly one
        assert len(set(ids)) == 5
    finally:
        cap.release()


def test_line_trigger_is_configured_and_waits_for_its_input(fake_camera: FakeCamera) -> None:
    """The simulated camera offers TriggerSource Line0 and Software, and cannot raise a line: with
    trigger=line0 it is configured as a real camera would be and then sends nothing, as a camera
    whose line sees no edge. A line the camera lacks is an error listing those it has."""
    cap = open_camera("pixel=Mono8&trigger=line0")
    try:
        assert (cap.applied["TriggerSelector"], cap.applied["TriggerMode"], cap.applied["TriggerSource"]) == (
            "FrameStart", "On", "Line0")
        assert frames_within(cap, 1.0) == 0
        with pytest.raises(ConfigError, match=r"trigger=line0; software_trigger\(\) needs trigger=software"):
            cap.software_trigger()
    finally:
        cap.release()
    with pytest.raises(CameraError, match=r"TriggerSource 'Line1' .* offers TriggerSource Line0, Software"):
        open_camera("trigger=line1")
    # Back to free running: frames flow again (the trigger was really switched, both ways).
    cap = open_camera("pixel=Mono8&trigger=off")
    try:
        assert cap.applied["TriggerMode"] == "Off"
        next_frame(cap)
    finally:
        cap.release()


def test_features_the_camera_lacks_are_named(fake_camera: FakeCamera) -> None:
    with pytest.raises(CameraError, match=r"no GenICam feature Gain \(dB\).*It has GainRaw.*gain_raw="):
        open_camera("gain_db=3")
    with pytest.raises(CameraError, match=r"PixelFormat 'BGR8' .* offers PixelFormat .*Mono8"):
        open_camera("pixel=BGR8")
    with pytest.raises(CameraError, match=r"exposure_us=2e\+07 is outside ExposureTimeAbs's range 10\.\.1e\+07"):
        open_camera("exposure_us=20000000")
    # After each refusal the camera is free again: a good configuration opens.
    cap = open_camera("pixel=Mono8")
    cap.release()


def test_camera_source_triggers_reports_a_lost_camera_and_reconnects(fake_camera: FakeCamera) -> None:
    events: list[CameraEvent] = []
    cond = threading.Condition()
    source = CameraSource("line1", parse_source(f"aravis:{ADDRESS}?pixel=Mono8&trigger=software"), cond,
                          queue_size=4, on_event=events.append, backoff_s=(0.2, 1.0), open_report_s=5.0)
    assert source.triggerable
    with pytest.raises(CameraError, match="camera line1 is starting"):
        source.software_trigger()
    source.start()
    try:
        assert wait_until(lambda: source.status == "running", 15), source.detail
        source.software_trigger()
        first = wait_until(source.queue.pop, 5)
        assert first is not None and first.error is None and first.image.shape == (H, W, 3)
        assert source.stalled_for(time.monotonic() + 60) is None  # silent between parts is normal

        fake_camera.kill()
        assert wait_until(lambda: any(e.status == "reconnecting" for e in events), 20), events
        lost = next(e for e in events if e.status == "reconnecting")
        assert "lost" in lost.detail
        with pytest.raises(CameraError, match=r"camera line1 is (reconnecting|unavailable)"):
            source.software_trigger()
        n_running = sum(e.status == "running" for e in events)

        fake_camera.start()
        assert wait_until(lambda: sum(e.status == "running" for e in events) > n_running, 30), events
        while source.queue.pop() is not None:  # the error item of the loss
            pass
        source.software_trigger()
        again = wait_until(source.queue.pop, 5)
        assert again is not None and again.error is None
    finally:
        source.stop()
        assert source.join(15)
    statuses = [e.status for e in events]
    assert statuses[0] == "running" and statuses[-1] == "stopped"
    assert statuses.index("reconnecting") < len(statuses) - 1 - statuses[::-1].index("running")


def test_incomplete_frames_are_errors_and_the_link_stays_up() -> None:
    """The simulated camera drops 90 % of its stream packets (-r 900): frames arrive incomplete. Each
    is an error item naming the buffer status, never a picture; the camera is not reconnected."""
    require_aravis()
    camera = FakeCamera(lost_per_thousand=900)
    camera.start()
    events: list[CameraEvent] = []
    source = CameraSource("lossy", parse_source(f"aravis:{ADDRESS}?pixel=Mono8"), threading.Condition(),
                          queue_size=64, on_event=events.append)
    try:
        source.start()
        assert wait_until(lambda: source.read_errors >= 5, 20), (source.status, source.detail)
        items = list(iter(source.queue.pop, None))
        bad = [it for it in items if it.error is not None]
        assert bad and all(it.image is None and "incomplete frame from camera" in it.error for it in bad), items[:3]
        assert source.status == "running" and [e.status for e in events] == ["running"]
    finally:
        source.stop()
        source.join(10)
        camera.kill()


def test_a_source_that_is_not_software_triggered_says_so() -> None:
    video = CameraSource("v", parse_source("0"), threading.Condition())
    assert not video.triggerable
    with pytest.raises(ConfigError, match=r"camera v .* cannot be triggered by software.*trigger=software"):
        video.software_trigger()

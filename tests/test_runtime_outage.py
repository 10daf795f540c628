"""A camera that never opens, stalls or sends huge frames is visible at once, and no frame read is left
unanswered (real sockets: a TCP server that accepts and never answers, a real PUB/SUB)."""

from __future__ import annotations

import logging
import socket
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from edge_somad.cli.runtime import run
from edge_somad.contracts.geometry import plan_geometry
from edge_somad.contracts.manifest import load_manifest
from edge_somad.runtime.health.health import CameraHealth
from edge_somad.runtime.messaging import messages
from edge_somad.runtime.messaging.curve import connect_subscriber
from edge_somad.runtime.messaging.publisher import Publisher
from edge_somad.runtime.messaging.verdict import judge
from edge_somad.runtime.pipeline.camera import SourceSpec, parse_source
from edge_somad.runtime.pipeline.defects import defects_of
from edge_somad.runtime.pipeline.frames import read_image_file
from edge_somad.runtime.pipeline.pipeline import Pipeline, PipelineConfig
from edge_somad.runtime.scorers.ort_scorer import OrtScorer
from tests.helpers.runtime import FakeDriver, H, W, free_port, grey, make_model_dir, write_video
from tests.test_runtime_pipeline import run_pipeline_with_sub


class SilentServer:
    """Accepts TCP connections and never sends a byte: an RTSP/HTTP camera that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def silent():
    server = SilentServer()
    yield server
    server.close()


def live_pipeline(model_dir: Path, cameras: list[tuple[str, SourceSpec]], config: PipelineConfig, opener=None):
    """Start a pipeline in a thread with a real SUB; returns (pipeline, thread, sub socket, result box)."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    manifest = load_manifest(model_dir)
    scorer = OrtScorer(model_dir / manifest.onnx, H, W)
    pub = Publisher(endpoint).__enter__()
    sub = connect_subscriber(endpoint, b"somad/", None)
    assert pub.wait_for_subscribers(1, 5.0)
    kw = {} if opener is None else {"opener": opener}
    pipe = Pipeline(scorer, manifest, cameras, pub, config, **kw)
    box: dict = {}

    def go() -> None:
        box["final"] = pipe.run()
        pub.__exit__(None, None, None)

    t = threading.Thread(target=go, daemon=True)
    return pipe, t, sub, box


def receive_until(sub, want, deadline_s: float) -> tuple[list[messages.Received], float | None]:
    """Messages until `want(msg)` is true (returns the time it took) or the deadline."""
    got, t0 = [], time.monotonic()
    while time.monotonic() - t0 < deadline_s:
        if sub.poll(50):
            m = messages.parse_message(sub.recv_multipart())
            got.append(m)
            if want(m):
                return got, time.monotonic() - t0
    return got, None


def test_camera_that_never_answers_is_in_status_and_heartbeat_within_2s(tmp_path: Path, silent) -> None:
    d = make_model_dir(tmp_path / "m")
    cams = [("cam0", SourceSpec("stream", f"http://127.0.0.1:{silent.port}/video.mjpg"))]
    pipe, t, sub, box = live_pipeline(d, cams, PipelineConfig(heartbeat_s=0.5))
    t.start()
    status_seen = beat_seen = None
    t0 = time.monotonic()
    msgs: list[messages.Received] = []
    while time.monotonic() - t0 < 4.0 and not (status_seen and beat_seen):
        got, _ = receive_until(sub, lambda m: True, 0.2)
        msgs += got
        for m in got:
            h = m.header
            if m.kind == "status" and h.get("event") == "camera" and h["status"] == "unavailable":
                status_seen = status_seen or time.monotonic() - t0
            if m.kind == "heartbeat":
                cam = h["cameras"]["cam0"]
                if cam["status"] == "unavailable" and cam["health"]["state"] != "ok":
                    assert any("camera unavailable" in r for r in cam["health"]["reasons"])
                    assert cam["health"]["link"]["status"] == "unavailable" and cam["fps"] == 0
                    beat_seen = beat_seen or time.monotonic() - t0
    pipe.stop("test done")
    t.join(10)
    sub.close()
    assert status_seen is not None and status_seen < 2.0, [m.header for m in msgs]
    assert beat_seen is not None and beat_seen < 2.0
    health = [m.header for m in msgs if m.kind == "status" and m.header.get("event") == "health"]
    assert health and health[0]["state"] == "warn" and "camera unavailable" in health[0]["reasons"][0]
    assert box["final"]["camera_timeout"] is None


def test_camera_timeout_ends_the_run(tmp_path: Path, silent) -> None:
    d = make_model_dir(tmp_path / "m")
    cams = [("cam0", SourceSpec("stream", f"http://127.0.0.1:{silent.port}/x"))]
    _pipe, t, sub, box = live_pipeline(d, cams, PipelineConfig(camera_timeout_s=1.0))
    t0 = time.monotonic()
    t.start()
    t.join(10)
    sub.close()
    final = box["final"]
    assert final["camera_timeout"] == "cam0" and "--camera-timeout 1" in final["reason"]
    assert 1.0 <= time.monotonic() - t0 < 6.0


def test_run_command_exits_1_on_camera_timeout(tmp_path: Path) -> None:
    d = make_model_dir(tmp_path / "m")
    app = typer.Typer()
    app.command("run")(run)
    app.command("other")(lambda: None)
    res = CliRunner().invoke(app, ["run", "--camera", "7", "--model", str(d), "--camera-timeout", "1",
                                   "--publish", f"tcp://127.0.0.1:{free_port()}", "--log-level", "warning"])
    assert res.exit_code == 1, res.output
    assert "error: camera cam0 unavailable" in res.output


class Stalls(FakeDriver):
    """A live camera: 20 frames at 50 fps, then it blocks (a paused source) until released."""

    resume = threading.Event()

    def read(self):
        self.n += 1
        if self.n > 20:
            Stalls.resume.wait(10)
            return "end", None, "source closed"
        time.sleep(0.02)
        return "frame", np.full((120, 160, 3), 60 + self.n, np.uint8), None


def test_stalled_live_stream_is_declared_within_a_few_intervals(tmp_path: Path) -> None:
    d = make_model_dir(tmp_path / "m")
    Stalls.resume.clear()
    cams = [("cam0", SourceSpec("stream", "rtsp://fake"))]
    pipe, t, sub, box = live_pipeline(d, cams, PipelineConfig(heartbeat_s=0.3, stall_min_s=0.5), opener=Stalls)
    t.start()
    got, took = receive_until(sub, lambda m: m.kind == "status" and m.header.get("status") == "stalled", 5.0)
    assert took is not None, [m.header for m in got]
    assert took < 0.4 + 0.5 + 1.0  # 20 frames, then a stall after 0.5 s (+ slack for a busy machine)
    beat, _ = receive_until(sub, lambda m: m.kind == "heartbeat", 2.0)
    cam = beat[-1].header["cameras"]["cam0"]
    assert cam["status"] == "stalled" and cam["fps"] == 0 and cam["health"]["state"] == "warn"
    Stalls.resume.set()
    pipe.stop("test done")
    t.join(10)
    sub.close()
    assert box["final"]["verdicts"]["pass"] == 20


def test_max_frames_answers_every_frame_read(tmp_path: Path) -> None:
    d = make_model_dir(tmp_path / "m")
    video = write_video(tmp_path / "v.avi", [grey(), grey(100, 140)] * 20)
    final, sub = run_pipeline_with_sub(d, [str(video), str(video)], PipelineConfig(max_frames=7, queue_size=3))
    cams = final["cameras"].values()
    assert len(sub.verdicts()) == 7 and final["published"] == 7 and "max frames (7)" in final["reason"]
    assert sum(c["frames"] + c["read_errors"] for c in cams) == 7 and all(c["queued"] == 0 for c in cams)


def huge_png(width: int, height: int) -> bytes:
    """A structurally complete PNG declaring width x height (its pixel data is never decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_frames_above_the_pixel_budget_are_refused_before_decoding(tmp_path: Path) -> None:
    (tmp_path / "big.png").write_bytes(huge_png(20000, 20000))
    img, why = read_image_file(tmp_path / "big.png")
    assert img is None and "20000x20000" in why and "budget" in why
    cv2.imwrite(str(tmp_path / "ok.jpg"), grey())
    assert read_image_file(tmp_path / "ok.jpg")[0] is not None
    img, why = read_image_file(tmp_path / "ok.jpg", max_pixels=160 * 120 - 1)
    assert img is None and "160x120" in why
    d = make_model_dir(tmp_path / "m")
    folder = tmp_path / "cam"
    folder.mkdir()
    (folder / "0.png").write_bytes(huge_png(20000, 20000))
    cv2.imwrite(str(folder / "1.png"), grey())
    _final, sub = run_pipeline_with_sub(d, [str(folder)])
    assert [v["verdict"] for v in sub.verdicts()] == ["error", "pass"]


def test_empty_or_mistyped_folder_camera_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "line" / "good").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "line" / "good" / "0.png"), grey())
    with caplog.at_level(logging.WARNING):
        parse_source(str(tmp_path / "line"))
    assert "holds no image files" in caplog.text and "did you mean" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        parse_source(str(tmp_path / "line" / "good"))
    assert caplog.text == ""


def test_a_new_fault_reason_in_alarm_is_an_event() -> None:
    cam = CameraHealth("c", {})
    cam.observe_frame((120, 160), grey(64, 96), 0.0)
    assert cam.update() is None
    cam.observe_frame((240, 320), grey(64, 96) + 1, 0.1)  # resolution change: alarm
    assert cam.update() == ("ok", "alarm") and cam.new_reasons == cam.reasons
    cam.observe_frame((240, 320), np.zeros((64, 96, 3), np.uint8), 0.2)  # and now black: a new reason
    assert cam.update() == ("alarm", "alarm")
    assert len(cam.new_reasons) == 1 and "black frame" in cam.new_reasons[0]
    cam.observe_frame((240, 320), np.zeros((64, 96, 3), np.uint8) + 2, 0.3)  # black again: nothing new
    assert cam.update() is None


def test_a_pass_carries_no_defect_boxes() -> None:
    amap = np.zeros((H, W), np.float32)
    amap[10:20, 10:20] = 0.8  # above the pixel threshold 0.5 ...
    g = plan_geometry(H, W, H, W, "letterbox")
    passed = judge(0.8, amap, 1.0, g)  # ... on a part below the image threshold 1.0
    failed = judge(0.8, amap, 0.7, g)
    assert passed.verdict == "pass" and defects_of(passed, 0.5) == []
    assert failed.verdict == "fail" and len(defects_of(failed, 0.5)) == 1

"""Frame sources on real OpenCV captures: video files, image folders, broken files, live-style drops."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_somad.errors import ConfigError
from edge_somad.runtime.pipeline.camera import (
    CameraEvent,
    CameraSource,
    DropOldestQueue,
    FrameItem,
    SourceSpec,
    parse_cameras,
    parse_source,
)
from tests.helpers.poll import wait_until
from tests.helpers.runtime import FakeDriver, defect, grey, write_video


def drain(cam: CameraSource, timeout: float = 10.0) -> list[FrameItem]:
    """Consume until the camera finished and its queue is empty (bounded)."""
    items: list[FrameItem] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        item = cam.queue.pop()
        if item is not None:
            items.append(item)
        elif cam.finished:
            break
        else:
            time.sleep(0.002)
    assert cam.finished, "camera did not finish in time"
    return items


def start(spec: SourceSpec, **kw) -> tuple[CameraSource, list[CameraEvent]]:
    events: list[CameraEvent] = []
    cam = CameraSource("c", spec, threading.Condition(), on_event=events.append, **kw)
    cam.start()
    return cam, events


def test_parse_source_kinds(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.avi", [grey()] * 2)
    assert parse_source("0") == SourceSpec("index", 0)
    assert parse_source(" 12 ") == SourceSpec("index", 12)
    assert parse_source(str(tmp_path)) == SourceSpec("folder", str(tmp_path))
    assert parse_source(str(video)) == SourceSpec("file", str(video))
    assert parse_source("rtsp://10.0.0.5/stream1").kind == "stream"
    assert parse_source("https://cam/x.mjpg").live
    with pytest.raises(ConfigError, match="neither a camera index"):
        parse_source(str(tmp_path / "missing.avi"))


def test_parse_cameras_ids(tmp_path: Path) -> None:
    cams = parse_cameras(["0", f"top={tmp_path}", "rtsp://h/s?user=a"])
    assert [c for c, _ in cams] == ["cam0", "top", "cam2"]
    assert cams[2][1] == SourceSpec("stream", "rtsp://h/s?user=a")
    with pytest.raises(ConfigError, match="not unique"):
        parse_cameras(["a=0", "a=1"])
    with pytest.raises(ConfigError, match="no --camera"):
        parse_cameras([])


def test_drop_oldest_queue_counts() -> None:
    q = DropOldestQueue(2, threading.Condition())
    for i in range(5):
        q.put(FrameItem("c", i, 0.0, 0.0, None))
    assert q.drops == 3 and len(q) == 2
    assert [q.pop().frame_id, q.pop().frame_id] == [3, 4]
    assert q.pop() is None


def test_video_file_replays_every_frame_then_ends(tmp_path: Path) -> None:
    frames = [grey() if i % 2 else defect() for i in range(12)]
    cam, events = start(SourceSpec("file", str(write_video(tmp_path / "v.avi", frames))))
    items = drain(cam)
    assert [it.frame_id for it in items] == list(range(12))  # replay waits, nothing dropped
    assert cam.drops == 0 and cam.status == "ended"
    assert all(it.error is None and it.image.shape == (120, 160, 3) for it in items)
    assert all(b.monotonic >= a.monotonic and b.captured_at >= a.captured_at
               for a, b in itertools.pairwise(items))
    assert [e.status for e in events] == ["running", "ended"]


def test_truncated_video_gives_error_item_then_ends(tmp_path: Path) -> None:
    v = write_video(tmp_path / "v.avi", [defect()] * 20)
    data = v.read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: len(data) * 6 // 10])
    cam, events = start(SourceSpec("file", str(tmp_path / "cut.avi")))
    items = drain(cam)
    good = [it for it in items if it.error is None]
    assert 0 < len(good) < 20
    assert items[-1].error is not None and "truncated" in items[-1].error
    assert items[-1].frame_id == len(good)  # the failure is a frame of its own, in order
    assert events[-1].status == "ended"


def test_folder_replay_sorted_with_unreadable_image(tmp_path: Path) -> None:
    for i, img in enumerate([grey(), defect(), grey(60, 80)]):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), img)
    (tmp_path / "001b.png").write_bytes(b"not a png")
    (tmp_path / "notes.txt").write_text("ignored")
    cam, events = start(SourceSpec("folder", str(tmp_path)))
    items = drain(cam)
    assert len(items) == 4
    assert [it.error is None for it in items] == [True, True, False, True]
    assert "001b.png" in items[2].error
    assert items[3].image.shape == (60, 80, 3)
    assert cam.read_errors == 1 and events[-1].status == "ended"


class FastLive(FakeDriver):
    """A live camera that produces frames as fast as it can (no real device on CI)."""

    def read(self):
        self.n += 1
        time.sleep(0.0005)
        return "frame", np.full((8, 8, 3), self.n % 256, np.uint8), None


def test_live_source_drops_oldest_when_consumer_is_slow() -> None:
    cam, _ = start(SourceSpec("stream", "rtsp://fake"), queue_size=2, opener=FastLive)
    wait_until(lambda: cam.drops > 10)  # nobody consumes
    assert cam.fps() > 0
    cam.stop()
    assert cam.join(2.0)
    assert cam.drops > 10 and len(cam.queue) == 2
    a, b = cam.queue.pop(), cam.queue.pop()
    assert b.frame_id == a.frame_id + 1 and b.frame_id == cam.frames - 1  # the two freshest frames
    assert cam.fps() == 0 and cam.status == "stopped"  # no stale rate once it stopped


def test_unreachable_stream_reconnects_with_backoff() -> None:
    cam, events = start(SourceSpec("stream", "http://127.0.0.1:1/none.mjpg"), backoff_s=(0.05, 0.2))
    wait_until(lambda: sum(e.status == "unavailable" for e in list(events)) >= 3)
    cam.stop()
    assert cam.join(3.0)
    retries = [e for e in events if e.status == "unavailable"]  # never opened: unavailable, not reconnecting
    assert len(retries) >= 3
    assert "retry in 0.1s" in retries[1].detail and "retry in 0.2s" in retries[-1].detail  # doubled, capped
    assert len(cam.queue) == 0 and events[-1].status == "stopped"


def test_missing_file_at_start_is_an_error_item(tmp_path: Path) -> None:
    cam, events = start(SourceSpec("file", str(tmp_path / "gone.avi")))
    items = drain(cam)
    assert len(items) == 1 and "cannot open" in items[0].error
    assert events[-1].status == "ended"

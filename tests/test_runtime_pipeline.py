"""End to end: real captures -> stand-in ONNX model -> real PUB socket -> real SUB on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

from edge_somad.contracts.manifest import load_manifest
from edge_somad.errors import ConfigError
from edge_somad.runtime.messaging import messages
from edge_somad.runtime.messaging.curve import CurveClient, connect_subscriber
from edge_somad.runtime.messaging.publisher import Publisher
from edge_somad.runtime.messaging.verdict import NOT_CALIBRATED, judge
from edge_somad.runtime.pipeline.camera import SourceSpec, parse_cameras
from edge_somad.runtime.pipeline.pipeline import Pipeline, PipelineConfig
from edge_somad.runtime.scorers.ort_scorer import OrtScorer
from edge_somad.runtime.scorers.scorer import ScoreResult
from tests.helpers.runtime import (
    THRESHOLD,
    FakeDriver,
    H,
    W,
    defect,
    free_port,
    grey,
    make_model_dir,
    write_video,
)

VERDICT_FIELDS = {"schema", "frame_id", "camera", "captured_at", "published_at", "latency_ms", "score",
                  "score_normalised", "threshold", "verdict", "error", "defects", "model", "heatmap"}


class Collector(threading.Thread):
    """A SUB that records every message, in arrival order, until the final status (or `timeout_s`).
    The lists it hands out are copies: they can be read while it is still recording."""

    def __init__(self, endpoint: str, curve: CurveClient | None = None, timeout_s: float = 20.0) -> None:
        super().__init__(daemon=True)
        self.sock = connect_subscriber(endpoint, b"somad/", curve)
        self.msgs: list[messages.Received] = []
        self.timeout_s = timeout_s

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if not self.sock.poll(100):
                continue
            m = messages.parse_message(self.sock.recv_multipart())
            self.msgs.append(m)
            if m.kind == "status" and m.header.get("event") == "final":
                break
        self.sock.close()

    def verdicts(self) -> list[dict]:
        return [m.header for m in list(self.msgs) if m.kind == "verdict"]

    def events(self, name: str) -> list[dict]:
        return [m.header for m in list(self.msgs) if m.kind == "status" and m.header.get("event") == name]


def run_pipeline_with_sub(model_dir: Path, cameras: list[str], config: PipelineConfig = PipelineConfig(),
                          wrap=None) -> tuple[dict, Collector]:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    manifest = load_manifest(model_dir)
    scorer = OrtScorer(model_dir / manifest.onnx, H, W)
    if wrap is not None:
        scorer = wrap(scorer)
    with Publisher(endpoint) as pub:
        sub = Collector(endpoint)
        assert pub.wait_for_subscribers(1, 5.0)
        sub.start()
        final = Pipeline(scorer, manifest, parse_cameras(cameras), pub, config).run()
        sub.join(20)
    return final, sub


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return make_model_dir(tmp_path / "model")


def test_judge_never_passes_on_doubt() -> None:
    ok = np.zeros((2, 2), np.float32)
    assert (judge(0.1, ok, 0.5).verdict, judge(0.1, ok, 0.5).error) == ("pass", None)
    assert judge(0.5, ok, 0.5).verdict == "fail"  # at the threshold: fail
    nan = judge(float("nan"), ok, 0.5)
    assert nan.verdict == "error" and nan.score is None and nan.anomaly_map is None  # nothing of it published
    inf = judge(0.1, np.array([[np.inf]]), 0.5)
    assert inf.verdict == "error" and inf.anomaly_map is None and inf.normalised_map is None
    uncal = judge(0.1, ok, None)
    assert (uncal.verdict, uncal.error) == ("error", NOT_CALIBRATED)
    assert uncal.anomaly_map is not None and uncal.normalised_map is None  # real map, no scale to normalise by
    half = judge(0.25, np.full((2, 2), 0.25, np.float32), 0.5)
    assert half.score_normalised == 0.5 and np.allclose(half.normalised_map, 0.5)


def test_video_verdicts_schema_heatmap_defects(tmp_path: Path, model_dir: Path) -> None:
    frames = [grey() if i % 2 == 0 else defect() for i in range(8)]
    video = write_video(tmp_path / "v.avi", frames)
    final, sub = run_pipeline_with_sub(model_dir, [f"line1={video}"], PipelineConfig(overlay=True))
    vs = sub.verdicts()
    assert [v["frame_id"] for v in vs] == list(range(8))
    assert [v["verdict"] for v in vs] == ["pass", "fail"] * 4
    topics = {m.topic for m in sub.msgs}
    assert {"somad/line1", "somad/_heartbeat", "somad/_status"} <= topics
    v = vs[1]
    assert v.keys() >= VERDICT_FIELDS and v["schema"] == messages.VERDICT_SCHEMA
    assert v["camera"] == "line1" and v["error"] is None and v["threshold"] == THRESHOLD
    assert v["score_normalised"] == pytest.approx(v["score"] / THRESHOLD)
    assert v["published_at"] >= v["captured_at"] and v["latency_ms"] >= 0
    assert v["model"]["backend"] == "onnxruntime" and v["model"]["precision"] == "fp32"
    # defect box in ORIGINAL frame pixels (patch pasted at x=40, y=30, 24x20 in a 160x120 frame)
    (d,) = v["defects"]
    assert abs(d["x"] - 40) <= 2 and abs(d["y"] - 30) <= 2 and abs(d["w"] - 24) <= 3 and abs(d["h"] - 20) <= 3
    assert abs(d["area_px"] - 24 * 20) < 80 and d["max_score"] > THRESHOLD
    assert vs[0]["defects"] == []
    # PNG heatmap: model-space shape, threshold at ~128
    msg = next(m for m in sub.msgs if m.kind == "verdict" and m.header["frame_id"] == 1)
    assert v["heatmap"] == {"encoding": "png", "shape": [H, W], "dtype": "uint8", "vmax": 2 * THRESHOLD}
    png = cv2.imdecode(np.frombuffer(msg.heatmap, np.uint8), cv2.IMREAD_UNCHANGED)
    assert png.shape == (H, W) and png.dtype == np.uint8 and png.min() == 0
    assert png.max() == round(v["score"] / THRESHOLD * 127.5)  # 0..2x threshold -> 0..255
    overlay = cv2.imdecode(np.frombuffer(msg.overlay, np.uint8), cv2.IMREAD_COLOR)
    assert overlay.shape == (120, 160, 3)
    assert final["event"] == "final" and final["reason"] == "all sources ended"
    assert final["verdicts"] == {"pass": 4, "fail": 4, "error": 0} and final["sent"]["line1"] == 8
    assert [v["seq"] for v in vs] == list(range(8))  # per-topic numbers: a subscriber counts its own gaps
    assert sub.msgs[-1].header["event"] == "final"


def test_overlay_flag_matches_the_overlay_part(tmp_path: Path, model_dir: Path) -> None:
    """A frame JPEG cannot hold (wider than 65500 px): no overlay part, and the header says so."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    assert cv2.imwrite(str(folder / "0.png"), grey())
    assert cv2.imwrite(str(folder / "1.png"), np.zeros((2, 70000, 3), np.uint8))
    _, sub = run_pipeline_with_sub(model_dir, [f"cam={folder}"], PipelineConfig(overlay=True, heatmap="none"))
    msgs = sorted((m for m in sub.msgs if m.kind == "verdict"), key=lambda m: m.header["frame_id"])
    assert [m.header["verdict"] for m in msgs] == ["pass", "error"]  # the strip is too thin to inspect
    assert msgs[0].header["overlay"] is True and msgs[0].overlay[:2] == b"\xff\xd8"
    assert msgs[1].header["overlay"] is False and msgs[1].overlay is None


def test_f16_heatmap_two_cameras_batched(tmp_path: Path, model_dir: Path) -> None:
    a = write_video(tmp_path / "a.avi", [defect()] * 6)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(6):
        cv2.imwrite(str(folder / f"{i}.png"), grey(90, 200))
    batches: list[int] = []

    class Spy:
        def __init__(self, inner) -> None:
            self.inner, self.backend, self.device, self.max_batch = inner, inner.backend, inner.device, None

        def score(self, frames):
            batches.append(len(frames))
            return self.inner.score(frames)

    config = PipelineConfig(heatmap="f16")
    final, sub = run_pipeline_with_sub(model_dir, [str(a), str(folder)], config, wrap=Spy)
    vs = sub.verdicts()
    assert sorted((v["camera"], v["verdict"]) for v in vs) == [("cam0", "fail")] * 6 + [("cam1", "pass")] * 6
    assert max(batches) == 2 and sum(batches) == 12  # frames from both cameras share a batch
    msg = next(m for m in sub.msgs if m.kind == "verdict" and m.header["camera"] == "cam0")
    amap = messages.decode_heatmap(msg.header["heatmap"], msg.heatmap)
    assert amap.shape == (H, W) and amap.max() == pytest.approx(msg.header["score"], abs=1e-3)
    assert final["cameras"]["cam1"]["frames"] == 6


def test_broken_sources_give_error_verdicts_then_clean_end(tmp_path: Path, model_dir: Path) -> None:
    v = write_video(tmp_path / "v.avi", [defect()] * 20)
    data = v.read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: len(data) // 2])
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "0.png"), grey())
    (folder / "1.png").write_bytes(b"\x89PNG broken")
    cv2.imwrite(str(folder / "2.png"), grey())
    final, sub = run_pipeline_with_sub(model_dir, [f"cut={tmp_path / 'cut.avi'}", f"dir={folder}"])
    by_cam = {c: [v for v in sub.verdicts() if v["camera"] == c] for c in ("cut", "dir")}
    assert [v["verdict"] for v in by_cam["dir"]] == ["pass", "error", "pass"]
    assert "1.png" in by_cam["dir"][1]["error"] and by_cam["dir"][1]["score"] is None
    cut = by_cam["cut"]
    assert cut[-1]["verdict"] == "error" and "truncated" in cut[-1]["error"]
    assert all(v["verdict"] == "fail" for v in cut[:-1]) and len(cut) < 20
    assert final["reason"] == "all sources ended" and final["errors"] == 2
    events = [(m.header["camera"], m.header["status"]) for m in sub.msgs if m.header.get("event") == "camera"]
    assert ("cut", "ended") in events and ("dir", "ended") in events


class NaNScorer:
    def __init__(self, inner) -> None:
        self.inner, self.backend, self.device, self.calls = inner, inner.backend, inner.device, 0

    def score(self, frames):
        self.calls += 1
        res = self.inner.score(frames)
        if self.calls % 3 == 1:
            return ScoreResult(np.full_like(res.scores, np.nan), res.maps)
        if self.calls % 3 == 2:
            maps = res.maps.copy()
            maps[:, 0, 0] = np.inf
            return ScoreResult(res.scores, maps)
        raise RuntimeError("CUDA error: an illegal memory access")


def test_nan_inf_and_exceptions_are_errors_and_loop_continues(tmp_path: Path, model_dir: Path) -> None:
    video = write_video(tmp_path / "v.avi", [grey()] * 9)
    final, sub = run_pipeline_with_sub(model_dir, [str(video)], PipelineConfig(heatmap="png"), wrap=NaNScorer)
    vs = sub.verdicts()
    assert len(vs) == 9 and {v["verdict"] for v in vs} == {"error"}  # grey frames, yet never "pass"
    assert [("non-finite" in v["error"]) for v in vs[:3]] == [True, True, False]
    assert "scorer failed: RuntimeError: CUDA error" in vs[2]["error"] and vs[2]["score"] is None
    assert all(v["heatmap"] is None for v in vs)  # a NaN/inf map is never sent
    assert final["errors"] == 9 and final["reason"] == "all sources ended"


def test_uncalibrated_model_is_error_with_reason(tmp_path: Path) -> None:
    d = make_model_dir(tmp_path / "m", threshold=None, pixel_threshold=None)
    video = write_video(tmp_path / "v.avi", [grey(), defect()])
    _, sub = run_pipeline_with_sub(d, [str(video)], PipelineConfig(heatmap="f16"))
    vs = sub.verdicts()
    assert [v["verdict"] for v in vs] == ["error", "error"]
    assert all(v["error"] == NOT_CALIBRATED and v["score_normalised"] is None for v in vs)
    assert vs[1]["score"] > 0.9 and vs[1]["heatmap"]["encoding"] == "f16"  # raw data still useful


class FloatFrames(FakeDriver):
    """A driver that hands out float frames: the pipeline must reject them, not guess a scale."""

    def read(self):
        self.n += 1
        if self.n > 2:
            return "end", None, "done"
        return "frame", np.zeros((50, 50, 3), np.float32), None


def test_bad_frame_dtype_is_error_verdict(model_dir: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    manifest = load_manifest(model_dir)
    with Publisher(endpoint) as pub, OrtScorer(model_dir / "model.onnx", H, W) as scorer:
        sub = Collector(endpoint)
        assert pub.wait_for_subscribers(1, 5.0)
        sub.start()
        pipe = Pipeline(scorer, manifest, [("f", SourceSpec("file", "x"))], pub, opener=FloatFrames)
        final = pipe.run()
        sub.join(10)
    assert [v["verdict"] for v in sub.verdicts()] == ["error", "error"]
    assert "bad frame: frame dtype is float32" in sub.verdicts()[0]["error"]
    assert final["frames_scored"] == 0


def test_max_frames_stops_early(tmp_path: Path, model_dir: Path) -> None:
    video = write_video(tmp_path / "v.avi", [grey()] * 30)
    final, sub = run_pipeline_with_sub(model_dir, [str(video)], PipelineConfig(max_frames=5, heatmap="none"))
    assert len(sub.verdicts()) == 5 and final["published"] == 5 and "max frames (5)" in final["reason"]
    assert all(v["heatmap"] is None for v in sub.verdicts())


def test_slow_subscriber_never_blocks_the_line(tmp_path: Path, model_dir: Path) -> None:
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(4)] * 60  # ~big JPEGs
    video = write_video(tmp_path / "v.avi", frames)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    manifest = load_manifest(model_dir)
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 2)
    sock.setsockopt(zmq.RCVBUF, 8192)
    sock.setsockopt(zmq.SUBSCRIBE, b"somad/")
    with Publisher(endpoint) as pub, OrtScorer(model_dir / "model.onnx", H, W) as scorer:
        sock.connect(endpoint)
        assert pub.wait_for_subscribers(1, 5.0)
        t0 = time.monotonic()
        # pictures on every verdict: messages big enough to fill the stalled subscriber's buffers
        config = PipelineConfig(overlay=True, heatmap="f16", heatmap_passes=1)
        final = Pipeline(scorer, manifest, [("c", SourceSpec("file", str(video)))], pub, config).run()
        elapsed = time.monotonic() - t0
    received = 0
    while sock.poll(200):
        sock.recv_multipart()
        received += 1
    sock.close()
    assert final["published"] == 240 and elapsed < 30
    assert received < 240  # the stalled subscriber lost messages, and the line did not wait for it


def test_subscriber_bridge_csv_and_saved_failures(tmp_path: Path, model_dir: Path) -> None:
    import io

    from edge_somad.runtime.messaging.subscriber import subscribe_loop

    video = write_video(tmp_path / "v.avi", [grey(), defect(), grey()])
    port = free_port()
    out = io.StringIO()
    result: dict = {}
    bridge = threading.Thread(target=lambda: result.update(n=subscribe_loop(
        f"tcp://127.0.0.1:{port}", "somad/", tmp_path / "log.csv", tmp_path / "fails", count=3, timeout_s=10,
        out=out)))
    bridge.start()
    manifest = load_manifest(model_dir)
    with Publisher(f"tcp://127.0.0.1:{port}") as pub, OrtScorer(model_dir / "model.onnx", H, W) as scorer:
        assert pub.wait_for_subscribers(1, 5.0)
        cams = [("c", SourceSpec("file", str(video)))]
        Pipeline(scorer, manifest, cams, pub, PipelineConfig(overlay=True)).run()
        bridge.join(15)
    assert result["n"].verdicts == 3 and result["n"].missed == 0 and result["n"].rejected == 0
    lines = [__import__("json").loads(x) for x in out.getvalue().splitlines()]
    assert [x["verdict"] for x in lines] == ["pass", "fail", "pass"] and lines[0]["topic"] == "somad/c"
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert rows[0].startswith("frame_id,camera,captured_at") and len(rows) == 4 and ",fail," in rows[2]
    saved = sorted(p.name for p in (tmp_path / "fails").iterdir())
    assert saved == ["c_00000001_fail.jpg", "c_00000001_fail.json", "c_00000001_fail_heatmap.png"]


def test_pictures_on_every_fail_and_every_nth_pass(tmp_path: Path, model_dir: Path) -> None:
    kinds = "ppfppppf"  # passes #0..#5 are frames 0, 1, 3, 4, 5, 6
    # passes of different grey levels: a frame identical to the one before never passes (frozen camera)
    video = write_video(tmp_path / "v.avi", [defect() if k == "f" else np.full_like(grey(), 100 + i)
                                             for i, k in enumerate(kinds)])
    config = PipelineConfig(heatmap="png", overlay=True, heatmap_passes=3)
    _, sub = run_pipeline_with_sub(model_dir, [f"c={video}"], config)
    msgs = sorted((m for m in sub.msgs if m.kind == "verdict"), key=lambda m: m.header["frame_id"])
    assert "".join(m.header["verdict"][0] for m in msgs) == kinds
    with_picture = [m.header["frame_id"] for m in msgs if m.header["heatmap"] is not None]
    assert with_picture == [0, 2, 4, 7]  # pass #0 (frame 0), pass #3 (frame 4) and both fails
    assert [m.header["frame_id"] for m in msgs if m.overlay] == with_picture
    assert all(m.header["overlay"] is (m.overlay is not None) for m in msgs)
    assert all(len(m.heatmap) == 0 for m in msgs if m.header["heatmap"] is None)
    for n, expected in ((1, [0, 1, 2, 3, 4, 5, 6, 7]), (0, [2, 7])):
        _, sub = run_pipeline_with_sub(model_dir, [f"c={video}"], PipelineConfig(heatmap_passes=n))
        assert sorted(v["frame_id"] for v in sub.verdicts() if v["heatmap"] is not None) == expected
    with pytest.raises(ConfigError, match="--heatmap-passes"):
        PipelineConfig(heatmap_passes=-1)

"""Heatmap encodings, defect boxes in original-frame coordinates, drain on stop, pipeline benchmark."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge_somad.bench.pipeline import bench_pipeline
from edge_somad.contracts.geometry import plan_geometry, resize_frame, resize_mask
from edge_somad.contracts.manifest import load_manifest
from edge_somad.runtime.messaging import messages
from edge_somad.runtime.messaging.publisher import Publisher
from edge_somad.runtime.messaging.verdict import judge, unscored
from edge_somad.runtime.pipeline.camera import SourceSpec
from edge_somad.runtime.pipeline.defects import defects_of, find_defects, map_to_frame, render_overlay
from edge_somad.runtime.pipeline.pipeline import Pipeline, PipelineConfig
from edge_somad.runtime.scorers.ort_scorer import OrtScorer
from tests.helpers.runtime import FakeDriver, H, W, defect, free_port, grey, make_model_dir, write_video


def test_png_heatmap_scale_and_roundtrip() -> None:
    amap = np.linspace(0, 3, H * W, dtype=np.float32).reshape(H, W)
    meta, payload = messages.encode_heatmap(amap, "png", threshold=1.0)
    assert meta == {"encoding": "png", "shape": [H, W], "dtype": "uint8", "vmax": 2.0}
    back = messages.decode_heatmap(meta, bytes(payload))
    np.testing.assert_allclose(back, np.clip(amap, 0, 2), atol=2.0 / 255)
    assert messages.normalise_map(np.array([[1.0]]), 1.0)[0, 0] == 128  # threshold -> mid-grey


def test_f16_and_none_encodings() -> None:
    amap = np.random.default_rng(0).normal(size=(H, W)).astype(np.float32) * 50
    meta, payload = messages.encode_heatmap(amap, "f16", threshold=None)
    np.testing.assert_allclose(messages.decode_heatmap(meta, bytes(payload)), amap, rtol=1e-3, atol=1e-2)
    assert messages.encode_heatmap(amap, "none", 1.0) == (None, b"")
    assert messages.encode_heatmap(amap, "png", None) == (None, b"")  # no threshold: no scale guessed
    amap[3, 3] = np.nan
    assert messages.encode_heatmap(amap, "f16", 1.0) == (None, b"")


@pytest.mark.parametrize("mode", ["letterbox", "crop", "stretch"])
@pytest.mark.parametrize("shape", [(120, 200), (300, 160)])
def test_defect_boxes_map_back_to_the_original_frame(mode: str, shape: tuple[int, int]) -> None:
    h, w = shape
    box = (w // 2 - 10, h // 2 - 15, 30, 24)  # central, so it survives a crop
    mask = np.zeros((h, w), np.uint8)
    mask[box[1]:box[1] + box[3], box[0]:box[0] + box[2]] = 1
    g = plan_geometry(h, w, H, W, mode)
    amap = resize_mask(mask, H, W, mode).astype(np.float32)  # the map a perfect model would give
    (d,) = find_defects(amap, g, pixel_threshold=0.5, min_area_px=1)
    tol_x, tol_y = 1.5 / g.scale_x + 1, 1.5 / g.scale_y + 1
    assert abs(d["x"] - box[0]) <= tol_x and abs(d["y"] - box[1]) <= tol_y
    assert abs(d["w"] - box[2]) <= 2 * tol_x and abs(d["h"] - box[3]) <= 2 * tol_y
    assert d["area_px"] == pytest.approx(box[2] * box[3], rel=0.35)
    back = map_to_frame(amap, g)
    assert back.shape == (h, w) and back[box[1] + box[3] // 2, box[0] + box[2] // 2] > 0.5 and back[0, 0] == 0


def test_defects_need_pixel_threshold_and_min_area() -> None:
    g = plan_geometry(H, W, H, W, "stretch")
    amap = np.zeros((H, W), np.float32)
    amap[10:12, 10:12] = 1.0  # 4 px
    amap[30:40, 50:60] = 2.0  # 100 px
    assert find_defects(amap, g, None) == []
    ds = find_defects(amap, g, 0.5, min_area_px=5)
    assert ds == [{"x": 50, "y": 30, "w": 10, "h": 10, "area_px": 100, "max_score": 2.0}]
    assert len(find_defects(amap, g, 0.5, min_area_px=1)) == 2


def test_overlay_is_a_frame_sized_jpeg() -> None:
    frame = defect()
    g = plan_geometry(120, 160, H, W, "letterbox")
    resized = resize_frame(frame, H, W, "letterbox").astype(np.float32)
    amap = (resized[..., 0] - resized[..., 2]) / 255
    v = judge(float(amap.max()), amap, 0.5, g)
    jpeg = render_overlay(frame, v, defects_of(v, 0.5))
    assert v.verdict == "fail" and jpeg[:2] == b"\xff\xd8" and len(jpeg) > 1000
    wide = np.zeros((2, 70000, 3), np.uint8)  # beyond JPEG's 65500 px: no overlay, not an empty one
    assert render_overlay(wide, unscored("bad frame", 0.5), []) is None


class LiveFrames(FakeDriver):
    def read(self):
        time.sleep(0.002)
        self.n += 1  # a live camera's frames differ (sensor noise); identical ones never pass
        return "frame", np.full((120, 160, 3), 100 + self.n % 50, np.uint8), None


class SlowScorer:
    def __init__(self, inner) -> None:
        self.inner, self.backend, self.device = inner, inner.backend, inner.device

    def score(self, frames):
        time.sleep(0.03)
        return self.inner.score(frames)


def test_stop_drains_the_queue_before_the_final_status(tmp_path: Path) -> None:
    d = make_model_dir(tmp_path / "m")
    manifest = load_manifest(d)
    with Publisher(f"tcp://127.0.0.1:{free_port()}") as pub, OrtScorer(d / "model.onnx", H, W) as ort:
        cams = [("a", SourceSpec("stream", "x")), ("b", SourceSpec("stream", "y"))]
        pipe = Pipeline(SlowScorer(ort), manifest, cams, pub, PipelineConfig(queue_size=3), opener=LiveFrames)
        threading.Timer(0.4, pipe.stop, args=("signal SIGTERM",)).start()
        final = pipe.run()
    cams = final["cameras"]
    assert final["status"] == "stopped" and final["reason"] == "signal SIGTERM"
    assert all(c["queued"] == 0 and c["capture_drops"] > 0 for c in cams.values())  # live: oldest dropped
    # every frame that was not dropped was scored and published, including the ones queued at stop
    assert final["verdicts"]["pass"] == sum(c["frames"] - c["capture_drops"] for c in cams.values())


def test_bench_pipeline_reports_fps_and_latency(tmp_path: Path) -> None:
    d = make_model_dir(tmp_path / "m")
    video = write_video(tmp_path / "v.avi", [grey(), defect()] * 15)
    r = bench_pipeline(d, video, "onnxruntime", "fp32", frames=30)
    assert r["frames"] == 30 and r["received"] == 30 and r["missed"] == 0
    assert r["pipeline_fps"] > 0 and r["scorer_fps"] > 0
    assert r["overhead_pct"] == pytest.approx(100 * (r["scorer_fps"] / r["pipeline_fps"] - 1), abs=1.0)
    assert 0 < r["latency_p50_ms"] <= r["latency_p99_ms"]

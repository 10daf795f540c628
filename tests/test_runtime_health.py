"""Line health: drift statistics on known shifts, and camera faults / input drift on real video clips."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_somad.contracts.geometry import plan_geometry, resize_frame
from edge_somad.contracts.manifest import load_manifest, save_manifest
from edge_somad.errors import ConfigError
from edge_somad.runtime.health import drift
from edge_somad.runtime.health.health import CameraHealth, HealthConfig
from edge_somad.runtime.pipeline.pipeline import PipelineConfig
from edge_somad.runtime.scorers.ort_scorer import OrtScorer
from tests.helpers.runtime import H, W, make_model_dir, write_video
from tests.helpers.synth import _part
from tests.test_runtime_pipeline import run_pipeline_with_sub

FAST = HealthConfig(input_window=5, input_min_frames=3, frozen_s=0.0, frozen_frames=5, score_window=40,
                    score_min_samples=20)


def parts(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [_part(rng, 120, 160) for _ in range(n)]


def decoded(path: Path) -> list[np.ndarray]:
    cap, out = cv2.VideoCapture(str(path)), []
    while True:
        ok, img = cap.read()
        if not ok:
            return out
        out.append(img)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return model_with_reference(tmp_path)


def model_with_reference(tmp_path: Path) -> Path:
    """The stand-in model with line-health references taken from a clean clip, as calibrate would."""
    d = make_model_dir(tmp_path / "model")
    frames = decoded(write_video(tmp_path / "ref.avi", parts(300, seed=1)))
    resized = np.stack([resize_frame(f, H, W, "letterbox", 0) for f in frames])
    scores = OrtScorer(d / "model.onnx", H, W).score(resized).scores
    m = load_manifest(d)
    boxes = [drift.content_box(plan_geometry(*f.shape[:2], H, W, "letterbox")) for f in frames]  # as fit does
    save_manifest(d, dataclasses.replace(m, reference={
        "input": drift.input_reference(resized, "test clip", boxes),
        "scores": drift.score_reference(scores, "test clip")}))
    return d


def health_events(sub) -> list[dict]:
    return [m.header for m in sub.msgs if m.kind == "status" and m.header.get("event") == "health"]


def test_score_drift_is_a_two_sample_test_that_counts_both_sizes() -> None:
    rng = np.random.default_rng(0)
    ref = drift.score_reference(rng.normal(10.0, 1.0, 2000), "normal(10, 1)")
    q = np.asarray(ref["quantiles"])
    same, shifted = rng.normal(10.0, 1.0, 200), rng.normal(11.0, 1.0, 200)  # + 1 std
    assert drift.psi(q, same) < 0.1 and drift.ks(q, same) < 0.15
    assert drift.psi(q, shifted) > 0.25 and drift.ks(q, shifted) > 0.3
    # and through the monitor: the same shift -> alarm, with the numbers in the snapshot
    cam = CameraHealth("c", {"scores": ref}, HealthConfig(score_window=200, score_min_samples=50))
    for s in same:
        cam.observe_verdict("pass", float(s))
    assert cam.update() is None and cam.state == "ok"
    for s in shifted:
        cam.observe_verdict("pass", float(s))
    assert cam.update() == ("ok", "alarm")
    snap = cam.snapshot()["score_drift"]
    assert snap["state"] == "alarm" and snap["p"] < 1e-5 and snap["n"] == 200 and snap["n_reference"] == 2000


@pytest.mark.parametrize("n_ref", [6, 42])
def test_a_small_reference_does_not_cry_wolf(n_ref: int) -> None:
    """Draws from the calibration distribution itself never alarm, however few calibration scores
    there are (the fixed PSI cut-offs did: PSI 3.9 on a 6-score reference); a real shift still does."""
    rng = np.random.default_rng(n_ref)
    config = HealthConfig(score_window=200, score_min_samples=50)
    false_alarms = 0
    for _ in range(20):
        ref = drift.score_reference(rng.normal(10.0, 1.0, n_ref), "calibration")
        cam = CameraHealth("c", {"scores": ref}, config)
        for s in rng.normal(10.0, 1.0, 200):
            cam.observe_verdict("pass", float(s))
        cam.update()
        false_alarms += cam.state != "ok"
    assert false_alarms <= 1, false_alarms  # warn p 1e-3: one in 20 trials is already unlikely
    cam = CameraHealth("c", {"scores": drift.score_reference(rng.normal(10.0, 1.0, n_ref), "cal")}, config)
    for s in rng.normal(14.0, 1.0, 200):  # + 4 std: a model gone blind (every part scores high)
        cam.observe_verdict("fail", float(s))
    cam.update()
    assert cam.snapshot()["score_drift"]["state"] == "alarm"


def test_fail_rate_jump_warns_then_alarms() -> None:
    cam = CameraHealth("c", {}, HealthConfig())
    for i in range(100):
        cam.observe_verdict("fail" if i % 25 == 0 else "pass", 1.0)  # 4 % fails: a normal line
    assert cam.update() is None and cam.snapshot()["fail_rate"]["rate"] == 0.04
    for _ in range(15):
        cam.observe_verdict("fail", 1.0)
    assert cam.update() == ("ok", "warn") and "failed" in cam.reasons[0]
    for _ in range(20):
        cam.observe_verdict("fail", 1.0)
    assert cam.update() == ("warn", "alarm") and cam.snapshot()["fail_rate"]["rate"] >= 0.5
    cam.observe_verdict("error", None)  # errors are no parts: not counted
    assert cam.snapshot()["fail_rate"]["n"] == 50


def test_faults_on_frames_and_no_flapping() -> None:
    rng = np.random.default_rng(0)
    good = [_part(rng, H, W) for _ in range(30)]
    cam = CameraHealth("c", {}, HealthConfig(clear_frames=5))
    white = np.full((H, W, 3), 252, np.uint8)
    assert cam.observe_frame((H, W), good[0], 0.0) is None
    assert cam.observe_frame((H, W), white, 0.1).startswith("saturated frame")
    assert cam.update() == ("ok", "alarm") and cam.reasons[0].startswith("camera fault: saturated")
    # a fault every other frame: one alarm, held, no event per frame; it clears 5 good frames later
    changes = []
    for i, f in enumerate(good[1:20]):
        cam.observe_frame((H, W), white if i % 2 == 0 and i < 8 else f, 0.2 + i / 10)
        changes.append(cam.update())
    assert [c for c in changes if c] == [("alarm", "ok")] and cam.faults["saturated"] == 5


def test_health_config_rejects_inverted_thresholds() -> None:
    with pytest.raises(ConfigError, match="warn <= alarm"):
        HealthConfig(ks_warn=0.3, ks_alarm=0.1)


def test_clean_clip_stays_ok(tmp_path: Path, model_dir: Path) -> None:
    # The stand-in model's scores take ~13 values (k/255): the KS test counts distinct scores, so a
    # clean clip stays far from significance whatever its length.
    video = write_video(tmp_path / "clean.avi", parts(240, seed=2))
    config = dataclasses.replace(FAST, score_window=200, score_min_samples=200)
    final, sub = run_pipeline_with_sub(model_dir, [f"line={video}"], PipelineConfig(health=config))
    assert final["verdicts"] == {"pass": 240, "fail": 0, "error": 0}
    assert health_events(sub) == []
    h = final["cameras"]["line"]["health"]
    assert h["state"] == "ok" and h["fault"] is None and h["reasons"] == []
    assert h["input_drift"]["state"] == "ok" and abs(h["input_drift"]["brightness"]["z"]) < 2
    assert h["score_drift"]["state"] == "ok" and h["score_drift"]["n"] == 200 and h["score_drift"]["p"] > 1e-3
    assert h["fail_rate"]["state"] == "ok" and h["compression"]["state"] == "ok"
    beats = [m.header for m in sub.msgs if m.kind == "heartbeat"]
    assert beats and all(b["cameras"]["line"]["health"]["state"] == "ok" for b in beats)


def test_brightness_ramp_down_warns_then_alarms(tmp_path: Path, model_dir: Path) -> None:
    frames = [np.clip(f.astype(np.float32) * (1.0 - 0.6 * i / 59), 0, 255).astype(np.uint8)
              for i, f in enumerate(parts(60, seed=3))]
    video = write_video(tmp_path / "ramp.avi", frames)
    final, sub = run_pipeline_with_sub(model_dir, [f"line={video}"], PipelineConfig(health=FAST))
    states = [e["state"] for e in health_events(sub)]
    assert states[:2] == ["warn", "alarm"], states
    first = health_events(sub)[0]
    assert first["camera"] == "line" and first["previous"] == "ok"
    assert any("brightness" in r and "below" in r for r in first["reasons"])
    h = final["cameras"]["line"]["health"]
    assert h["state"] == "alarm" and h["input_drift"]["brightness"]["z"] < -FAST.input_alarm_z
    assert final["verdicts"]["error"] == 0  # dim but not black: still scored


def test_repeated_frame_is_frozen(tmp_path: Path, model_dir: Path) -> None:
    clip = parts(10, seed=4)
    video = write_video(tmp_path / "frozen.avi", clip + [clip[-1]] * 20)
    final, sub = run_pipeline_with_sub(model_dir, [f"line={video}"], PipelineConfig(health=FAST))
    vs = sub.verdicts()
    assert len(vs) == 30 and all(v["verdict"] == "pass" for v in vs[:10])  # ten different parts
    # No frame of the frozen stream passes: frame 9's 20 repeats are errors, suspected until the
    # limit (5 identical frames) is reached, then declared frozen.
    assert all(v["verdict"] == "error" for v in vs[10:])
    suspected = [v for v in vs[10:] if "frozen stream suspected" in v["error"]]
    frozen = [v for v in vs[10:] if v not in suspected]
    assert len(suspected) == FAST.frozen_frames - 2 and len(frozen) == 21 - FAST.frozen_frames + 1
    assert all(v["error"].startswith("camera fault: frozen stream (") for v in frozen)
    events = health_events(sub)
    assert events and events[0]["state"] == "alarm" and "frozen" in events[0]["reasons"][0]
    assert final["cameras"]["line"]["health"]["fault_counts"]["frozen"] == len(frozen)


def test_black_clip_gives_error_verdicts(tmp_path: Path, model_dir: Path) -> None:
    video = write_video(tmp_path / "black.avi", [np.zeros((120, 160, 3), np.uint8)] * 8)
    final, sub = run_pipeline_with_sub(model_dir, [f"line={video}"], PipelineConfig(health=FAST))
    vs = sub.verdicts()
    assert len(vs) == 8 and all(v["verdict"] == "error" for v in vs)
    assert all(v["error"].startswith("camera fault: black frame") and v["score"] is None for v in vs)
    assert final["verdicts"] == {"pass": 0, "fail": 0, "error": 8}
    assert health_events(sub)[0]["state"] == "alarm"


def test_resolution_change_alarms(tmp_path: Path, model_dir: Path) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    for i, f in enumerate(parts(4, seed=5) + [cv2.resize(p, (200, 150)) for p in parts(2, seed=6)]):
        cv2.imwrite(str(folder / f"{i:03d}.png"), f)
    final, sub = run_pipeline_with_sub(model_dir, [f"line={folder}"], PipelineConfig(health=FAST))
    assert final["verdicts"]["pass"] == 6  # still scored: the picture is fine, the geometry changed
    (event,) = health_events(sub)
    assert event["state"] == "alarm" and "resolution changed from 160x120 to 200x150" in event["reasons"]


def test_old_manifest_without_reference_still_runs(tmp_path: Path) -> None:
    d = make_model_dir(tmp_path / "old")
    path = d / "manifest.json"
    data = json.loads(path.read_text())
    del data["reference"]  # as written before line health existed
    path.write_text(json.dumps(data))
    video = write_video(tmp_path / "clean.avi", parts(12, seed=7))
    final, _ = run_pipeline_with_sub(d, [f"line={video}"], PipelineConfig(health=FAST))
    h = final["cameras"]["line"]["health"]
    assert final["verdicts"]["pass"] == 12 and h["state"] == "ok"
    assert "no input reference" in h["input_drift"]["reason"] and "no calibration scores" in h["score_drift"]["reason"]


def test_compression_warns_above_what_the_model_was_fitted_on() -> None:
    """Blockiness of real JPEG round trips at model size: q30 blocks warn; a model fitted on JPEGs
    of that size (its fit reference says so) is not warned about the blocks it was fitted on."""
    from edge_somad.data import read_image, resolve_category
    from edge_somad.runtime.health import health_parts

    # real photos (the bundled sample) at a model's size: synthetic parts with edges on an 8-pixel
    # grid look "blocky" without any codec (docs/health.md)
    frames = [resize_frame(read_image(s.path), 128, 128, "letterbox", 0)
              for s in resolve_category("hazelnut_toy", None).test[:12]]

    def jpeg(q: int) -> list[float]:
        return [drift.blockiness(cv2.imdecode(cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, q])[1], 1))
                for f in frames]

    clean = [drift.blockiness(f) for f in frames]
    config = HealthConfig()
    assert health_parts.compression(clean, None, config)["state"] == "ok"
    q30 = health_parts.compression(jpeg(30), None, config)
    assert q30["state"] == "warn" and "JPEG" in q30["reason"]
    fitted_on = {"mean": float(np.mean(jpeg(30))), "std": 0.02, "n": 12}
    assert health_parts.compression(jpeg(30), fitted_on, config)["state"] == "ok"
    assert health_parts.compression(clean[:5], None, config)["blockiness"] is None  # too few frames yet


def test_frame_metrics_match_a_float64_reference() -> None:
    rng = np.random.default_rng(5)
    for frame in (_part(rng, 120, 160), np.full((64, 96, 3), 7, np.uint8),
                  cv2.GaussianBlur(rng.integers(0, 256, (90, 70, 3), dtype=np.uint8), (9, 9), 3)):
        f = frame.astype(np.float64)
        g = f[..., 0] * 0.114 + f[..., 1] * 0.587 + f[..., 2] * 0.299
        lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
        got = drift.frame_metrics(frame)
        assert got["brightness"] == pytest.approx(g.mean(), rel=1e-6)
        assert got["contrast"] == pytest.approx(g.std(), rel=1e-6, abs=1e-5)
        assert got["sharpness"] == pytest.approx(lap.var(), rel=1e-6, abs=1e-5)
        assert set(drift.frame_metrics(frame, sharpness=False)) == {"brightness", "contrast"}


def _sampled_health(drift_every: int, dim_to: float) -> tuple[list[str], CameraHealth]:
    """60 good parts dimmed linearly to `dim_to` of their brightness, fed to one camera's health."""
    rng = np.random.default_rng(7)
    ref_frames = [_part(rng, H, W) for _ in range(60)]
    cam = CameraHealth("c", {"input": drift.input_reference(ref_frames, "parts")},
                       dataclasses.replace(FAST, drift_every=drift_every))
    states = []
    for i in range(60):
        f = _part(rng, H, W).astype(np.float32) * (1.0 - (1.0 - dim_to) * i / 59)
        assert cam.observe_frame((H, W), np.clip(f, 0, 255).astype(np.uint8), i / 10) is None
        cam.update()
        states.append(cam.state)
    return states, cam


def test_drift_on_every_third_frame_still_sees_a_brightness_drop_and_stays_quiet_without_one() -> None:
    states, cam = _sampled_health(3, dim_to=0.4)
    assert "warn" in states and states[-1] == "alarm"
    assert states.index("warn") < states.index("alarm")
    assert cam._frames == 60 and len(cam._metrics) == FAST.input_window  # the window holds samples
    assert cam.snapshot()["input_drift"]["brightness"]["z"] < -FAST.input_alarm_z
    calm, _ = _sampled_health(3, dim_to=1.0)
    assert set(calm) == {"ok"}
    with pytest.raises(ConfigError, match="--drift-every"):
        HealthConfig(drift_every=0)


def test_sampling_leaves_the_per_frame_fault_checks_on_every_frame() -> None:
    rng = np.random.default_rng(8)
    cam = CameraHealth("c", {}, dataclasses.replace(FAST, drift_every=4))
    black = np.zeros((H, W, 3), np.uint8)
    faults = [cam.observe_frame((H, W), black if i % 4 == 1 else _part(rng, H, W), i / 10) for i in range(8)]
    assert [f is not None for f in faults] == [False, True, False, False, False, True, False, False]

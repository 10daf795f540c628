"""A new model without stopping the line: real ONNX Runtime models, a paced 20 frames/s video capture,
real ZeroMQ sockets. Every frame gets one verdict, each names the model that scored it, and a bad
bundle is refused (with a `model_swap_failed` event) while the line keeps scoring."""

from __future__ import annotations

import dataclasses
import itertools
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_somad.contracts.manifest import load_manifest, save_manifest
from edge_somad.runtime.messaging.publisher import Publisher
from edge_somad.runtime.pipeline.camera import SourceSpec
from edge_somad.runtime.pipeline.model_slot import LiveModel, ModelSlot, probe_score
from edge_somad.runtime.pipeline.pipeline import Pipeline, PipelineConfig
from edge_somad.runtime.scorers.ort_scorer import OrtScorer
from tests.helpers.poll import wait_until
from tests.helpers.runtime import H, W, free_port, write_video
from tests.helpers.runtime import make_bundle as bundle
from tests.test_runtime_pipeline import Collector


def live(d: Path) -> LiveModel:
    m = load_manifest(d)
    scorer = OrtScorer(d / m.onnx, H, W)
    return LiveModel(scorer, m, "fp32", d, "checked at start", probe_score(scorer, m))


@pytest.fixture
def models(tmp_path: Path) -> tuple[Path, Path]:
    return bundle(tmp_path / "a"), bundle(tmp_path / "b", scale=254.0)


def stream(tmp_path: Path, first: Path, actions, n_frames: int = 200) -> tuple[dict, Collector, list]:
    """Run the pipeline on a 20 frames/s paced video; `actions(pipe, sub)` runs on a side thread and
    stops the line when done. Returns (final status, collector, what actions returned)."""
    frames = [np.full((120, 160, 3), 60 + (i % 120), np.uint8) for i in range(n_frames)]  # all pass, none equal
    video = write_video(tmp_path / "line.avi", frames)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    results: list = []
    model = live(first)
    with Publisher(endpoint) as pub:
        sub = Collector(endpoint, timeout_s=60)
        assert pub.wait_for_subscribers(1, 5.0)
        sub.start()
        # queue 64: the line must not lose frames to a busy test machine either; losses are asserted zero
        pipe = Pipeline(model.scorer, model.manifest, [("cam0", SourceSpec("file", str(video), fps=20.0))], pub,
                        PipelineConfig(queue_size=64, heatmap="none"), live=model)

        def drive() -> None:
            try:
                results.append(actions(pipe, sub))
            finally:
                pipe.stop("test done")

        side = threading.Thread(target=drive, daemon=True)
        side.start()
        final = pipe.run()
        side.join(30)
        sub.join(30)
        pipe.slot.close()
    # Frames the line let fall (a full queue evicts the oldest); not ticks of the paced replay that passed
    # while its reader thread waited for a busy test machine's CPU (counted in capture_drops too).
    final["queue_drops"] = pipe.cameras[0].queue.drops
    return final, sub, results


def verdict_count(sub: Collector, n: int) -> None:
    wait_until(lambda: len(sub.verdicts()) >= n, timeout_s=20)


def assert_no_frame_lost(final: dict, verdicts: list[dict]) -> None:
    ids = [v["frame_id"] for v in verdicts]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "frame ids not contiguous: a frame was lost or repeated"
    assert final["queue_drops"] == 0
    assert final["verdicts"]["error"] == 0 and len(verdicts) == final["published"]


def shas(verdicts: list[dict]) -> list[str]:
    return [v["model"]["onnx_sha256"] for v in verdicts]


def test_swap_during_a_20fps_stream_loses_no_frame_and_splits_cleanly(tmp_path: Path, models) -> None:
    a, b = models
    sha_a, sha_b = load_manifest(a).onnx_sha256, load_manifest(b).onnx_sha256
    assert sha_a != sha_b

    def actions(pipe: Pipeline, sub: Collector) -> dict:
        verdict_count(sub, 20)
        event = pipe.slot.swap_model(b)
        verdict_count(sub, len(sub.verdicts()) + 20)
        return event

    final, sub, (event,) = stream(tmp_path, a, actions)
    verdicts = sub.verdicts()
    assert event["ok"] is True and event["event"] == "model_swapped"
    assert_no_frame_lost(final, verdicts)
    names = shas(verdicts)
    k = names.index(sha_b)
    assert 20 <= k < len(names) - 10  # (up to two batches scored before the swap were still in the outbox)
    assert names[:k] == [sha_a] * k and names[k:] == [sha_b] * (len(names) - k)  # every one, both sides
    (swapped,) = sub.events("model_swapped")
    assert swapped["old_sha256"] == sha_a and swapped["new_sha256"] == sha_b
    assert swapped["old_path"] == str(a) and swapped["new_path"] == str(b)
    assert swapped["first_camera"] == "cam0" and swapped["first_frame_id"] == verdicts[k]["frame_id"]
    assert swapped["model"]["onnx_sha256"] == sha_b and swapped["threshold"] == 0.5
    assert "export recorded" in swapped["self_check"]
    # on the wire between the last verdict of the old model and the first of the new one
    # (heartbeats and other status messages may interleave: only verdicts and this event are ordered)
    order = [m.header.get("frame_id") if m.kind == "verdict" else m.header.get("event") for m in sub.msgs
             if m.kind == "verdict" or m.header.get("event") == "model_swapped"]
    at = order.index("model_swapped")
    assert order[at - 1] == verdicts[k - 1]["frame_id"] and order[at + 1] == verdicts[k]["frame_id"]
    assert final["model"]["onnx_sha256"] == sha_b  # the heartbeat/final status name the model in use


def test_rollback_during_the_stream_goes_back_to_the_previous_model(tmp_path: Path, models) -> None:
    a, b = models
    sha_a, sha_b = load_manifest(a).onnx_sha256, load_manifest(b).onnx_sha256

    def actions(pipe: Pipeline, sub: Collector) -> list[dict]:
        refused = pipe.slot.rollback()  # nothing swapped yet: nothing to go back to
        verdict_count(sub, 10)
        swapped = pipe.slot.swap_model(b)
        verdict_count(sub, len(sub.verdicts()) + 15)
        back = pipe.slot.rollback(via="control")
        verdict_count(sub, len(sub.verdicts()) + 15)
        return [refused, swapped, back]

    final, sub, ((refused, swapped, back),) = stream(tmp_path, a, actions)
    assert not refused["ok"] and "no previous model" in refused["reason"]
    assert swapped["ok"] and back["ok"] and back["action"] == "rollback" and back["via"] == "control"
    verdicts = sub.verdicts()
    assert_no_frame_lost(final, verdicts)
    names = shas(verdicts)
    runs = [names[0]] + [y for x, y in itertools.pairwise(names) if x != y]
    assert runs == [sha_a, sha_b, sha_a]  # A, then B, then A again: each switch between two frames
    ev = sub.events("model_swapped")
    assert [(e["old_sha256"], e["new_sha256"], e["action"]) for e in ev] == [(sha_a, sha_b, "swap"),
                                                                             (sha_b, sha_a, "rollback")]
    assert ev[1]["new_path"] == str(a) and "as when it was loaded" in ev[1]["self_check"]
    assert [e["reason"] for e in sub.events("model_swap_failed")] == [refused["reason"]]


def test_a_refused_bundle_keeps_the_line_on_the_old_model(tmp_path: Path, models) -> None:
    a, b = models
    bad = shutil.copytree(b, tmp_path / "bad")
    (bad / "model.onnx").write_bytes(b"\x08\x07" + (bad / "model.onnx").read_bytes()[2:])  # sha no longer matches
    sha_a = load_manifest(a).onnx_sha256

    def actions(pipe: Pipeline, sub: Collector) -> list[dict]:
        verdict_count(sub, 10)
        refused = pipe.slot.swap_model(bad, via="watch")
        verdict_count(sub, len(sub.verdicts()) + 20)
        return [refused, pipe.slot.swap_model(b)]  # both ways: the good one goes in after

    final, sub, ((refused, good),) = stream(tmp_path, a, actions, n_frames=120)
    assert not refused["ok"] and good["ok"]
    (failed,) = sub.events("model_swap_failed")
    assert failed["path"] == str(bad) and failed["running_sha256"] == sha_a and failed["via"] == "watch"
    assert "sha256" in failed["reason"]
    verdicts = sub.verdicts()
    assert_no_frame_lost(final, verdicts)
    names = shas(verdicts)
    assert names[:30] == [sha_a] * 30 and len(sub.events("model_swapped")) == 1


def _corrupt(d: Path) -> None:
    (d / "model.onnx").write_bytes(b"not an onnx graph")
    m = load_manifest(d, verify_onnx=False)
    from edge_somad.contracts.manifest import sha256_file

    save_manifest(d, dataclasses.replace(m, onnx_sha256=sha256_file(d / "model.onnx")))  # sha right, graph broken


def _wrong_sha(d: Path) -> None:
    m = load_manifest(d)
    save_manifest(d, dataclasses.replace(m, onnx_sha256="0" * 64))


def _self_check(d: Path) -> None:
    m = load_manifest(d)
    frame = dict(m.reference["frame"], score=m.reference["frame"]["score"] * 0.5)
    save_manifest(d, dataclasses.replace(m, reference={**m.reference, "frame": frame}))


def _uncalibrated(d: Path) -> None:
    m = load_manifest(d)
    save_manifest(d, dataclasses.replace(m, threshold=None))


def _bad_manifest(d: Path) -> None:
    (d / "manifest.json").write_text('{"schema": "edge-somad/manifest/1", "name": "x"')  # cut short


@pytest.mark.parametrize(("damage", "reason"), [
    (_corrupt, "cannot be loaded by ONNX Runtime"),
    (_wrong_sha, "has sha256"),
    (_self_check, "self-check: the reference frame scores"),
    (_uncalibrated, "no fp32 threshold"),
    (_bad_manifest, "not valid JSON"),
    (None, "input differs from the running one (height 64 -> 48; width 96 -> 80)"),
    (lambda d: shutil.rmtree(d), "is not a folder"),
])
def test_each_bad_bundle_is_refused_with_its_reason(tmp_path: Path, models, damage, reason) -> None:
    a, b = models
    target = bundle(tmp_path / "geom", size=(48, 80)) if damage is None else shutil.copytree(b, tmp_path / "c")
    events: list[dict] = []
    slot = ModelSlot(live(a), events.append)
    try:
        assert slot.swap_model(b)["ok"]  # both ways: the good bundle goes in ...
        assert slot.rollback()["ok"] and slot.current.manifest.onnx_sha256 == load_manifest(a).onnx_sha256
        if damage is not None:
            damage(target)
        result = slot.swap_model(target)  # ... the damaged copy of it does not
        assert result["ok"] is False and result["event"] == "model_swap_failed"
        assert reason in result["reason"], result["reason"]
        assert events[-1] == result and result["running_sha256"] == load_manifest(a).onnx_sha256
        assert slot.current.path == a  # kept, and it still scores
        assert np.isfinite(slot.current.scorer.score(np.zeros((1, H, W, 3), np.uint8)).scores).all()
    finally:
        slot.close()


def test_an_old_bundle_without_reference_frame_is_checked_for_finite_output(tmp_path: Path, models) -> None:
    a, _ = models
    old_style = bundle(tmp_path / "old", scale=250.0, reference=False)
    slot = ModelSlot(live(a), [].append)
    try:
        event = slot.swap_model(old_style)
        assert event["ok"] and "no reference frame in this bundle" in event["self_check"]
        assert "checked finite output only" in event["self_check"]
    finally:
        slot.close()


def test_frames_too_small_for_the_new_model_are_refused(tmp_path: Path, models) -> None:
    """Camera compatibility: the new model's patch grid needs frames the camera does not deliver."""
    a, b = models
    m = load_manifest(b)
    save_manifest(b, dataclasses.replace(m, model={**m.model, "feature_grid": [64, 96]}))  # stride 1 pixel
    from edge_somad.runtime.health.health import HealthConfig, LineHealth

    health = LineHealth(["cam0"], {}, HealthConfig(), True, lambda e: None)
    health.cameras["cam0"].resolution = (32, 48)  # the camera's frames: half the model input
    slot = ModelSlot(live(a), [].append, health=health)
    try:
        event = slot.swap_model(b)
        assert not event["ok"]
        assert "camera cam0: frame 32x48 is below the model's minimum useful size" in event["reason"]
    finally:
        slot.close()


def test_score_drift_is_measured_against_the_new_models_calibration_after_a_swap(tmp_path: Path, models) -> None:
    a, b = models
    m = load_manifest(b)
    save_manifest(b, dataclasses.replace(m, reference={**m.reference, "scores": {"n": 40, "quantiles": [0.1, 0.2]}}))
    from edge_somad.runtime.health.health import HealthConfig, LineHealth

    health = LineHealth(["cam0"], {}, HealthConfig(), True, lambda e: None)
    health.verdict("cam0", "pass", 0.01)  # a score of the old model, on its scale
    slot = ModelSlot(live(a), [].append, health=health)
    try:
        assert health.cameras["cam0"].score_q is None
        assert slot.swap_model(b)["ok"]
        cam = health.cameras["cam0"]
        assert cam.score_q.tolist() == [0.1, 0.2] and cam.score_n == 40 and len(cam._scores) == 0
    finally:
        slot.close()


def test_no_swap_after_the_line_stopped(tmp_path: Path, models) -> None:
    a, b = models
    events: list[dict] = []
    slot = ModelSlot(live(a), events.append)
    slot.close()
    assert "the line has stopped" in slot.swap_model(b)["reason"]
    assert "the line has stopped" in slot.rollback()["reason"]
    assert [e["event"] for e in events] == ["model_swap_failed"] * 2

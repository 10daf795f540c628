"""Line health on a real model (fitted on the bundled Hazelnut Toy sample, so CI runs it): replaying
the model's own good images raises no alarm; a 55 % brightness drop and a shifted score
distribution (JPEG at the model's resolution, which blinds it) do. Real PUB/SUB sockets."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")

from edge_somad.contracts.geometry import resize_frame
from edge_somad.contracts.manifest import load_manifest
from edge_somad.runtime.messaging.publisher import Publisher
from edge_somad.runtime.pipeline.camera import SourceSpec
from edge_somad.runtime.pipeline.pipeline import Pipeline, PipelineConfig
from edge_somad.runtime.scorers.ort_scorer import OrtScorer
from tests.helpers.runtime import free_port
from tests.test_runtime_pipeline import Collector

SIZE = 128
FRAMES = 102  # every good image three times: the score window sees 34 distinct scores


@pytest.fixture(scope="module")
def hazelnut(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """A small real model (128 px, d 32, 12x12 SOM) and all 34 good images of the sample (fit,
    held-out calibration and test/good)."""
    from edge_somad.data import read_image, resolve_category
    from edge_somad.export.exporter import export_model
    from edge_somad.workflows import calibrate_holdout, fit_from_cli

    out = tmp_path_factory.mktemp("hz_drift") / "model"
    fit_from_cli("hazelnut_toy", None, out, "efficientnet-lite0", None, SIZE, SIZE, "letterbox", "somad",
                 32, "gaussian", 12, 4, "none", 0.01, 0, "cpu")
    export_model(out)
    calibrate_holdout(out, 0.005)
    cat = resolve_category("hazelnut_toy", None)
    good = [read_image(p) for p in cat.train] + [read_image(s.path) for s in cat.test if s.label == 0]
    return out, good


def replay(model_dir: Path, frames: list[np.ndarray], folder: Path) -> tuple[dict, list[dict]]:
    """The frames as a looping folder camera through `run`'s pipeline; (final status, health events)."""
    folder.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:03d}.png"), f)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    manifest = load_manifest(model_dir)
    with Publisher(endpoint) as pub, OrtScorer(model_dir / manifest.onnx, SIZE, SIZE) as scorer:
        sub = Collector(endpoint)
        assert pub.wait_for_subscribers(1, 5.0)
        sub.start()
        cams = [("line", SourceSpec("folder", str(folder), loop=True))]
        final = Pipeline(scorer, manifest, cams, pub, PipelineConfig(max_frames=FRAMES, heatmap="none")).run()
        sub.join(30)
    events = [m.header for m in sub.msgs if m.kind == "status" and m.header.get("event") == "health"]
    return final, events


def test_replaying_the_models_own_good_images_raises_no_alarm(hazelnut, tmp_path: Path) -> None:
    model_dir, good = hazelnut
    final, events = replay(model_dir, good, tmp_path / "good")
    h = final["cameras"]["line"]["health"]
    assert final["published"] == FRAMES and final["verdicts"]["fail"] == 0
    assert events == [] and h["state"] == "ok", h["reasons"]
    # measured, not skipped: enough scores, and the reference is only 6 calibration scores
    assert h["score_drift"]["n"] == FRAMES and h["score_drift"]["n_distinct"] == len(good)
    assert h["score_drift"]["n_reference"] == 6 and h["input_drift"]["n"] > 0
    assert h["fail_rate"]["rate"] == 0 and h["compression"]["blockiness"] is None  # 1024 px: far above model size


def test_a_55_percent_brightness_drop_alarms(hazelnut, tmp_path: Path) -> None:
    model_dir, good = hazelnut
    dim = [(f.astype(np.float32) * 0.45).astype(np.uint8) for f in good]
    final, events = replay(model_dir, dim, tmp_path / "dim")
    h = final["cameras"]["line"]["health"]
    assert h["state"] == "alarm" and h["input_drift"]["state"] == "alarm"
    assert h["input_drift"]["brightness"]["z"] < -8
    assert events and any("brightness" in r and "below" in r for r in events[-1]["reasons"])


def test_jpeg_at_model_resolution_shifts_scores_and_alarms(hazelnut, tmp_path: Path) -> None:
    """The blind spot: the same good parts, pre-resized to the model's size and JPEG-compressed,
    mostly FAIL. Input drift alone stays quiet; the fail rate, the whole score distribution and the
    compression check do not."""
    model_dir, good = hazelnut
    small = [resize_frame(f, SIZE, SIZE, "letterbox", 0) for f in good]
    jpeg = [cv2.imdecode(cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 30])[1], cv2.IMREAD_COLOR)
            for f in small]
    final, events = replay(model_dir, jpeg, tmp_path / "jpeg")
    h = final["cameras"]["line"]["health"]
    assert final["verdicts"]["fail"] > FRAMES // 2  # good parts, rejected: the model no longer sees them
    assert h["state"] == "alarm" and h["fail_rate"]["state"] == "alarm"
    assert h["score_drift"]["state"] in ("warn", "alarm") and h["score_drift"]["ks_above"] > 0.9
    assert h["compression"]["state"] == "warn" and h["compression"]["blockiness"] > 1.12
    reasons = " ".join(r for e in events for r in e["reasons"])
    assert "failed" in reasons and "JPEG" in reasons and "scores above calibration" in reasons

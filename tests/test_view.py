"""`edge-somad view`: the page's data from a real run, and the page itself in a real headless chromium."""

from __future__ import annotations

import base64
import json
import shutil
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("aiohttp", reason="edge-somad[view] (aiohttp) is not installed")

from edge_somad.contracts.manifest import load_manifest
from edge_somad.errors import ConfigError
from edge_somad.runtime.health.health import HealthConfig
from edge_somad.runtime.messaging.publisher import Publisher
from edge_somad.runtime.pipeline.camera import parse_cameras
from edge_somad.runtime.pipeline.pipeline import Pipeline, PipelineConfig
from edge_somad.runtime.scorers.ort_scorer import OrtScorer
from edge_somad.runtime.view.view import BackgroundView, ViewConfig
from tests.helpers.requires import missing_component
from tests.helpers.runtime import H, W, free_port, write_video
from tests.test_runtime_health import model_with_reference, parts


def with_defect(img: np.ndarray, x: int = 60, y: int = 40) -> np.ndarray:
    out = img.copy()
    out[y:y + 22, x:x + 26] = (255, 0, 0)  # pure blue: the stand-in model's "defect"
    return out


def run_line(tmp_path: Path, endpoint: str, curve=None) -> dict:
    """Two cameras through the real pipeline: line1 with some fails, line2 going black (alarm)."""
    model = model_with_reference(tmp_path)
    clip = parts(24, seed=11)
    line1 = [with_defect(f) if i % 5 == 2 else f for i, f in enumerate(clip)]
    line2 = parts(12, seed=12) + [np.zeros_like(clip[0])] * 4
    v1, v2 = write_video(tmp_path / "l1.avi", line1), write_video(tmp_path / "l2.avi", line2)
    manifest = load_manifest(model)
    config = PipelineConfig(overlay=True, health=HealthConfig(frozen_s=0.0, frozen_frames=5))
    with Publisher(endpoint, curve=curve) as pub:
        assert pub.wait_for_subscribers(1, 10.0), "the view did not subscribe"
        return Pipeline(OrtScorer(model / manifest.onnx, H, W), manifest, parse_cameras(
            [f"line1={v1}", f"line2={v2}"]), pub, config).run()


def get_state(url: str) -> dict:
    with urllib.request.urlopen(url + "api/state", timeout=5) as r:
        return json.load(r)


def wait_for(fn, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_view_state_counts_every_verdict(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with BackgroundView(ViewConfig(endpoints=(endpoint,), port=0)) as view:
        final = run_line(tmp_path, endpoint)
        state = wait_for(lambda: (s := get_state(view.url))["total_verdicts"] == final["published"] and s)
    assert state, "the view did not count every verdict"
    t1, t2 = state["tiles"]["line1"], state["tiles"]["line2"]
    assert t1["counts"] == {"pass": 19, "fail": 5, "error": 0} and t1["fail_rate"] == pytest.approx(5 / 24)
    assert len(t1["fails"]) == 5 and all(f["image"].startswith("data:image/jpeg;base64,") for f in t1["fails"])
    assert t1["image"].startswith("data:image/jpeg;base64,") and t1["latency_ms"]["p95"] >= 0
    assert t2["counts"]["error"] == 4 and t2["health"]["state"] == "alarm"
    assert "black frame" in t2["health"]["reasons"][0]


def test_view_with_curve_keys(tmp_path: Path) -> None:
    from edge_somad.runtime.messaging.curve import load_client, load_server, make_keys

    keys = tmp_path / "keys"
    make_keys(keys, "server")
    make_keys(keys, "operator")
    (keys / "clients").mkdir()
    (keys / "clients" / "operator.key").write_bytes((keys / "operator.key").read_bytes())
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    client = load_client(keys / "server.key", keys / "operator.key_secret")
    with BackgroundView(ViewConfig(endpoints=(endpoint,), port=0), curve=client) as view:
        final = run_line(tmp_path, endpoint, curve=load_server(keys / "server.key_secret", keys / "clients"))
        state = wait_for(lambda: get_state(view.url)["total_verdicts"] == final["published"])
    assert state and final["published"] == 40


def test_view_config_errors() -> None:
    with pytest.raises(ConfigError, match="repeat"):
        ViewConfig(endpoints=("tcp://a:1", "tcp://a:1"))
    with pytest.raises(ConfigError, match="no --connect"):
        ViewConfig(endpoints=())


def _chrome():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e .[dev])")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        missing_component("Debian chromium + chromium-driver", "scripts/setup.sh installs them as root")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=960,1040"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def test_page_in_headless_chromium(tmp_path: Path) -> None:
    browser = _chrome()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    try:
        with BackgroundView(ViewConfig(endpoints=(endpoint,), port=0)) as view:
            browser.get(view.url)
            assert browser.title == "edge-somad view"
            final = run_line(tmp_path, endpoint)
            published = final["published"]
            counter = lambda: browser.find_element("id", "total-verdicts").text  # noqa: E731
            assert wait_for(lambda: counter() == str(published)), f"page shows {counter()}, published {published}"
            # the final status (sent after the last verdict) brings the health of the whole run
            drift_text = lambda: browser.find_element(  # noqa: E731
                "css selector", 'section.tile[data-camera="line1"] .drift').text
            assert wait_for(lambda: "(n 24)" in drift_text()), drift_text()  # every scored frame: 19 passes and 5 fails
            tiles = browser.find_elements("css selector", "section.tile")
            assert sorted(t.get_attribute("data-camera") for t in tiles) == ["line1", "line2"]
            line1 = browser.find_element("css selector", 'section.tile[data-camera="line1"]')
            assert line1.find_element("css selector", ".n-fail").text == "5"
            assert len(line1.find_elements("css selector", ".fails img")) == 5
            line2 = browser.find_element("css selector", 'section.tile[data-camera="line2"]')
            assert "alarm" in line2.get_attribute("class")
            assert browser.execute_script("return document.querySelector('img.pic').naturalWidth") > 0
            shot = tmp_path / "view.png"
            assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
            print(f"screenshot (test artifact): {shot}")
    finally:
        browser.quit()


def test_view_state_two_endpoints_and_hostile_heartbeat() -> None:
    from edge_somad.runtime.messaging import messages
    from edge_somad.runtime.view.view_state import ViewState

    def verdict(camera: str, frame_id: int, verdict: str) -> messages.Received:
        header = messages.verdict_header(
            camera=camera, frame_id=frame_id, captured_at=1.0, published_at=1.01, score=0.1, threshold=0.5,
            verdict=verdict, error=None, defects=[], model={}, heatmap=None, frame_shape=(4, 4), overlay=False)
        return messages.Received(f"somad/{camera}", header, b"", None)

    state = ViewState(["tcp://a:1", "tcp://b:2"], n_fails=2)
    for i, v in enumerate(["pass", "fail", "fail", "fail"]):
        state.apply("tcp://a:1", verdict("cam0", i, v))
    state.apply("tcp://b:2", verdict("cam0", 0, "pass"))
    beat = {"schema": messages.HEARTBEAT_SCHEMA, "cameras": {"../evil": {"health": {"state": "alarm"}},
                                                             "cam0": {"status": "running", "fps": 5.0}}}
    state.apply("tcp://b:2", messages.Received("somad/_heartbeat", beat, b"", None))
    seen: dict = {}
    first = state.changes(seen)
    assert sorted(first["tiles"]) == ["tcp://a:1/cam0", "tcp://b:2/cam0"] and first["total_verdicts"] == 5
    a = first["tiles"]["tcp://a:1/cam0"]
    assert a["counts"] == {"pass": 1, "fail": 3, "error": 0} and [f["frame_id"] for f in a["fails"]] == [3, 2]
    assert a["image"] is None  # no overlay, no heatmap in these messages: nothing to draw
    assert first["tiles"]["tcp://b:2/cam0"]["camera_status"] == "running"
    assert state.changes(seen)["tiles"] == {}  # nothing new: nothing sent again


def test_picture_falls_back_to_the_heatmap_without_overlay() -> None:
    from edge_somad.runtime.messaging import messages
    from edge_somad.runtime.view.view_state import picture

    amap = np.tile(np.linspace(0, 1, 96, dtype=np.float32), (64, 1))  # 0 .. 2x threshold, left to right
    meta, payload = messages.encode_heatmap(amap, "png", 0.5)
    header = messages.verdict_header(
        camera="c", frame_id=0, captured_at=1.0, published_at=1.0, score=1.0, threshold=0.5, verdict="fail",
        error=None, defects=[], model={}, heatmap=meta, frame_shape=(120, 160), overlay=False)
    url = picture(messages.Received("somad/c", header, bytes(payload), None), 640)
    assert url is not None and url.startswith("data:image/jpeg;base64,")
    img = cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    blue, red = img[32, :, 0].astype(int), img[32, :, 2].astype(int)
    assert img.shape == (64, 96, 3) and red[80] > blue[80] + 50 and blue[5] > red[5] + 50  # hot right, cold left


def test_a_pass_sent_without_a_picture_keeps_the_last_one_on_screen() -> None:
    from edge_somad.runtime.messaging import messages
    from edge_somad.runtime.view.view_state import ViewState

    meta, payload = messages.encode_heatmap(np.full((64, 96), 0.8, np.float32), "png", 0.5)

    def verdict(frame_id: int, verdict: str, heat: bool) -> messages.Received:
        header = messages.verdict_header(
            camera="c", frame_id=frame_id, captured_at=1.0, published_at=1.0, score=0.8, threshold=0.5,
            verdict=verdict, error=None, defects=[], model={}, heatmap=meta if heat else None,
            frame_shape=(120, 160), overlay=False)
        return messages.Received("somad/c", header, bytes(payload) if heat else b"", None)

    state = ViewState(["tcp://a:1"], n_fails=2)
    state.apply("tcp://a:1", verdict(0, "fail", heat=True))
    (tile,) = state.tiles.values()
    shown = tile.image()
    assert shown is not None
    state.apply("tcp://a:1", verdict(1, "pass", heat=False))  # run --heatmap-passes skipped this one
    assert tile.image() == shown and tile.last["frame_id"] == 1 and tile.counts["pass"] == 1
    state.apply("tcp://a:1", verdict(2, "error", heat=False))  # an error shows that it has no picture
    assert tile.image() is None

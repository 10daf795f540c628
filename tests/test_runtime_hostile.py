"""A fake publisher sends hostile messages to the reference subscriber (`--save-fails DIR`): every
file written lies inside DIR, none is overwritten, the subscriber keeps running and counts them."""

from __future__ import annotations

import io
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import zmq

from edge_somad.errors import ConfigError, InputError
from edge_somad.runtime.messaging import messages
from edge_somad.runtime.messaging.subscriber import subscribe_loop
from edge_somad.runtime.pipeline.camera import parse_cameras
from tests.helpers.runtime import free_port

HOSTILE_IDS = ["../../x/pwned", "/tmp/abs-pwned", "..", ".", "a.b", "a.json", "x" * 10_000, "nul\x00x", "",
               "_status", "-rf", "c/d", "c\\d", "ｃａｍ", "cam 1", "x" * 65]


def header(camera: object, frame_id: object = 7, verdict: object = "fail", **extra: object) -> dict:
    return {"schema": messages.VERDICT_SCHEMA, "camera": camera, "frame_id": frame_id, "verdict": verdict,
            "error": None, "heatmap": None, "defects": [], **extra}


def frames(h: dict, topic: str | None = None, heat: bytes = b"", overlay: bytes | None = None) -> list[bytes]:
    name = topic if topic is not None else f"somad/{h['camera']}"
    parts = [name.encode("utf-8", "surrogatepass"), json.dumps(h).encode(), heat]
    return [*parts, overlay] if overlay is not None else parts


def hostile_messages() -> list[list[bytes]]:
    out = [frames(header(cam)) for cam in HOSTILE_IDS]
    out += [
        frames(header(123)), frames(header(None)),
        frames(header("cam1"), topic="somad/cam2"),  # topic and header disagree
        frames(header("cam1", frame_id="../1")), frames(header("cam1", frame_id=-1)),
        frames(header("cam1", frame_id=True)), frames(header("cam1", frame_id=2**70)),
        frames(header("cam1", verdict="PASS")), frames(header("cam1", seq=-3)),
        frames(header("cam1", heatmap={"encoding": "f16", "shape": [10**9, 1]})),
        frames(header("cam1", heatmap="png")),
        [b"somad/cam1", b"\xff\xfe not json"], [b"somad/cam1", b"[1, 2]"], [b"somad/cam1"],
        [b"somad/\xff\xfe", json.dumps(header("cam1")).encode()],  # topic not UTF-8
        [b"somad/cam1", json.dumps({"schema": "evil/1"}).encode()],
    ]
    return out


def test_hostile_camera_ids_never_leave_the_folder_or_overwrite(tmp_path: Path) -> None:
    fails = tmp_path / "fails"
    fails.mkdir()
    (fails / "line-1_00000007_fail.json").write_text("precious")  # an earlier run's file, same name
    outside = tmp_path / "outside.txt"
    outside.write_text("outside")
    os.symlink(outside, fails / "line-1_00000007_fail_1.json")  # a planted link to follow
    before = {p for p in tmp_path.rglob("*")}
    valid = [frames(header("line-1", nonce=i)) for i in range(3)]  # same camera, frame id, verdict
    bad_heat = header("line-1", frame_id=8, verdict="error", nonce=3,
                      heatmap={"encoding": "f16", "shape": [4, 4], "dtype": "float16", "vmax": None})
    valid += [frames(bad_heat, heat=b"\x00" * 5, overlay=b"\xff\xd8jpeg")]  # heatmap bytes do not fit the shape
    good_heat = header("cam_2", frame_id=1, verdict="error", nonce=4,
                       heatmap={"encoding": "f16", "shape": [2, 3], "dtype": "float16", "vmax": None})
    valid += [frames(good_heat, heat=np.arange(6, dtype="<f2").tobytes())]
    valid += [frames(header("cam_2", frame_id=2, verdict="pass", nonce=5))]  # a pass: printed, not saved
    port = free_port()
    pub = zmq.Context.instance().socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(f"tcp://127.0.0.1:{port}")
    out, result = io.StringIO(), {}
    bridge = threading.Thread(target=lambda: result.update(r=subscribe_loop(
        f"tcp://127.0.0.1:{port}", "somad/", tmp_path / "log.csv", fails, count=len(valid), timeout_s=10,
        out=out)))
    bridge.start()
    try:
        assert pub.poll(5000) and pub.recv()[:1] == b"\x01"  # the bridge's subscription arrived
        hostile = hostile_messages()
        for parts in hostile + valid:
            pub.send_multipart(parts)
        bridge.join(15)
    finally:
        pub.close()
    r = result["r"]
    assert r.verdicts == len(valid) and r.rejected == len(hostile)
    new = {p for p in tmp_path.rglob("*")} - before
    assert all(p.resolve().is_relative_to(fails.resolve()) or p.name == "log.csv" for p in new), sorted(new)
    assert outside.read_text() == "outside" and (fails / "line-1_00000007_fail.json").read_text() == "precious"
    saved = {p.name: p for p in fails.iterdir() if p.suffix == ".json" and not p.is_symlink()}
    nonces = sorted(json.loads(p.read_text())["nonce"] for n, p in saved.items() if n != "line-1_00000007_fail.json")
    assert nonces == [0, 1, 2, 3, 4]  # five saved headers, none lost to a name clash
    assert {"line-1_00000007_fail_2.json", "line-1_00000007_fail_3.json", "line-1_00000007_fail_4.json"} <= set(saved)
    assert (fails / "line-1_00000008_error.jpg").read_bytes() == b"\xff\xd8jpeg"
    assert not (fails / "line-1_00000008_error_heatmap.npy").exists()  # undecodable: skipped, not guessed
    np.testing.assert_array_equal(np.load(fails / "cam_2_00000001_error_heatmap.npy"),
                                  np.arange(6, dtype=np.float32).reshape(2, 3))
    assert [json.loads(x)["nonce"] for x in out.getvalue().splitlines()] == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("camera", HOSTILE_IDS)
def test_the_same_camera_id_rule_applies_where_ids_are_configured(camera: str) -> None:
    with pytest.raises(InputError, match="not allowed"):
        messages.check_camera_id(camera)
    if not any(c in camera for c in "/\\:"):  # with a separator, "x=0" is a path, not an id
        with pytest.raises(ConfigError, match="not allowed"):
            parse_cameras([f"{camera}=0"])


def test_valid_ids_still_parse(tmp_path: Path) -> None:
    assert [c for c, _ in parse_cameras(["line-1=0", "Cam_2=1", "7=2"])] == ["line-1", "Cam_2", "7"]
    assert messages.check_camera_id("a" * 64) == "a" * 64

"""Line health as Sparkplug device metrics, and commands from the network that are garbage.

Health blocks come from the runtime's own CameraHealth fed black, frozen and good frames, carried
in heartbeats by a real Publisher, as `run` sends them.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from edge_somad.errors import InputError
from edge_somad.runtime.bridges import sparkplug_commands as cmd
from edge_somad.runtime.bridges import sparkplug_proto as pb
from edge_somad.runtime.health.health import CameraHealth, HealthConfig
from tests.helpers.poll import wait_until
from tests.helpers.sparkplug_host import BOOLEAN, STRING, SparkplugHost, encode_command
from tests.test_bridge_sparkplug import GROUP, NODE, SpbLine, header

CAMERAS = ("good", "black", "frozen", "resized")
FLAGS = ("Health/Black Frame", "Health/Frozen Stream", "Health/Saturated Frame", "Health/Resolution Changed")


def _health_blocks() -> dict[str, dict]:
    rng = np.random.default_rng(0)
    cfg = HealthConfig(frozen_s=0.0, frozen_frames=5)
    cams = {c: CameraHealth(c, {}, cfg) for c in CAMERAS}
    still = rng.integers(40, 200, (96, 128, 3), dtype=np.uint8)
    for t in range(12):
        frames = {"good": rng.integers(40, 200, (96, 128, 3), dtype=np.uint8),  # a new part every frame
                  "black": np.zeros((96, 128, 3), np.uint8), "frozen": still,
                  "resized": rng.integers(40, 200, (96, 128, 3), dtype=np.uint8)}
        for c, cam in cams.items():
            shape = (600, 800) if c == "resized" and t > 5 else (480, 640)  # the camera's mode changed
            cam.observe_frame(shape, frames[c], t * 0.1)
            cam.update()
    return {c: cam.snapshot() for c, cam in cams.items()}


def _timeline(host: SparkplugHost, device: str) -> list[dict]:
    """The device's values as a host tracks them: each birth's, then each data message's on top."""
    _, data = host.check()
    by_at = {v["_at"]: v for d, v in data if d == device}
    out, now = [], {}
    for i, m in enumerate(list(host.messages)):
        if m.kind == "DBIRTH" and m.device == device:
            now = {x["name"]: (None if x["is_null"] else x["value"]) for x in m.payload["metrics"]}
            out.append(dict(now))
        elif i in by_at:
            now.update(by_at[i])
            out.append(dict(now))
    return out


def test_black_and_frozen_cameras_raise_health_metrics_good_one_stays_quiet(tmp_path: Path) -> None:
    blocks = _health_blocks()
    assert blocks["black"]["fault"].startswith("black") and blocks["frozen"]["fault"].startswith("frozen")
    with SpbLine(tmp_path, CAMERAS) as line:
        host, run, log = line.host, line.run, line.log
        assert host.wait_for(lambda m: len(host.of("DBIRTH")) >= 4, 30), log.read_text()
        run.health = blocks  # the next heartbeats carry the faults: DDATA on the born devices

        def fired(_: list) -> bool:
            black, frozen, resized = (_timeline(host, c) for c in ("black", "frozen", "resized"))
            return bool(black and frozen and resized and black[-1]["Health/Black Frame"]
                        and frozen[-1]["Health/Frozen Stream"] and resized[-1]["Health/Resolution Changed"])

        assert host.wait_for(fired, 20), log.read_text()[-2000:]
        for i in range(30):
            run.pub.publish_verdict({**header(i), "camera": "good"})
        assert host.wait_for(lambda m: sum("Inspection/Result" in v for v in _timeline(host, "good")[1:]) >= 30, 20)
    errors, _ = host.check()
    assert errors == [], errors[:10]
    assert "cannot be sent as Sparkplug" not in log.read_text()  # nothing but verdicts in the queue
    black, frozen, good = (_timeline(host, c)[-1] for c in ("black", "frozen", "good"))
    assert black["Health/State"] == "alarm" and black["Health/Camera Fault"].startswith("black frame")
    assert frozen["Health/State"] == "alarm" and frozen["Health/Frozen Stream"] and not frozen["Health/Black Frame"]
    resized = _timeline(host, "resized")[-1]
    assert resized["Health/State"] == "alarm" and resized["Health/Resolution"] == "640x480"
    assert not resized["Health/Black Frame"] and not resized["Health/Frozen Stream"]
    for values in _timeline(host, "good"):  # quiet on good frames, in every birth and data message
        assert values["Health/State"] in ("ok", "unknown") and not any(values[f] for f in FLAGS), values
        assert values["Health/Camera Fault"] == ""
    assert good["Health/State"] == "ok" and good["Health/Input Drift"] == "ok" and good["Camera/Status"] == "running"


def test_garbage_commands_are_logged_and_ignored_and_the_node_still_answers(tmp_path: Path) -> None:
    with SpbLine(tmp_path, ("c1",)) as line:
        host, log, bridge = line.host, line.log, line.bridge
        assert host.wait_for(lambda m: len(host.of("DBIRTH")) >= 1, 30), log.read_text()
        rnd = random.Random(7)
        valid = encode_command([("Node Control/Rebirth", None, BOOLEAN, True)])
        n_garbage = 0
        for payload in _garbage(rnd, valid, 300):
            host.send(f"spBv1.0/{GROUP}/NCMD/{NODE}", payload)
            host.send(f"spBv1.0/{GROUP}/DCMD/{NODE}/c1", payload)
            n_garbage += 2
        host.send(f"spBv1.0/{GROUP}/DCMD/{NODE}/no-such-cam", encode_command([("Trigger", None, STRING, "P-1")]))
        n_births = len(host.of("NBIRTH"))
        host.send(f"spBv1.0/{GROUP}/NCMD/{NODE}", valid)  # still alive and listening
        assert host.wait_for(lambda m: len(host.of("NBIRTH")) > n_births, 30), log.read_text()[-3000:]
        assert bridge.poll() is None
        assert wait_until(lambda: log.read_text().count("ignored a command") >= n_garbage * 0.9, 20)
    assert "Traceback" not in log.read_text()
    errors, _ = host.check()
    assert errors == [], errors[:10]


def _garbage(rnd: random.Random, valid: bytes, n: int) -> list[bytes]:
    """Random bytes, truncations and bit flips of a valid command, wrong types, huge and nested payloads."""
    out = [b"", b"\x00", b"\xff" * 20, b"{\"online\": true}", b"\x12" + b"\xff" * 10, b"\x12\x80\x80\x80\x80\x10",
           encode_command([("Node Control/Rebirth", None, BOOLEAN, False)]),
           encode_command([("Node Control/Rebirth", None, STRING, "true")]),
           encode_command([("Trigger", None, STRING, "")]), encode_command([("Trigger", None, STRING, "x" * 5000)]),
           encode_command([("Trigger", None, STRING, "P\x00")]), encode_command([("Trigger", None, 7, 12)]),
           encode_command([("Trigger", None, STRING, "P-1"), ("Trigger Deadline Ms", None, 7, 0)]),
           encode_command([("Other", None, BOOLEAN, True)]), b"\x12\x02\x0a\xff" * 100, b"\x00" * 70_000]
    while len(out) < n:
        kind = rnd.randrange(3)
        if kind == 0:
            out.append(rnd.randbytes(rnd.randrange(1, 200)))
        elif kind == 1:
            out.append(valid[:rnd.randrange(1, len(valid))])
        else:
            b = bytearray(valid)
            b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
            out.append(bytes(b))
    return out


@pytest.mark.parametrize("seed", range(3))
def test_command_parsers_raise_input_error_and_nothing_else(seed: int) -> None:
    """In process, many more inputs: every parser refuses with InputError or accepts; nothing else escapes."""
    rnd = random.Random(seed)
    valid = encode_command([("Trigger", None, STRING, "P-7"), ("Trigger Deadline Ms", None, 7, 300)])
    accepted = 0
    for payload in _garbage(rnd, valid, 3000):
        for parse in (cmd.wants_rebirth, lambda p: cmd.parse_trigger("c1", p, 0), cmd.parse_state,
                      pb.decode_command):
            try:
                parse(payload)
                accepted += 1
            except InputError:
                pass
    assert cmd.parse_trigger("c1", valid, None) == cmd.TriggerRequest("c1", "P-7", 300)
    assert accepted < 3000 * 4  # not everything passes


def test_state_and_trigger_parsers_refuse_what_is_wrong_and_accept_what_is_right() -> None:
    assert cmd.parse_state(b'{"online": true, "timestamp": 1700000000000}') == (True, 1700000000000)
    for bad in (b'{"online": "yes", "timestamp": 1}', b'{"online": true}', b"ONLINE", b"[" * 5000,
                b'{"online": true, "timestamp": -1}', b'{"online": true, "timestamp": true}', b"\xff\xfe"):
        with pytest.raises(InputError):
            cmd.parse_state(bad)
    assert cmd.wants_rebirth(encode_command([(None, 2, BOOLEAN, True)]))  # by alias, as Tahu hosts send it
    with pytest.raises(InputError, match="Rebirth"):
        cmd.wants_rebirth(encode_command([("Node Control/Rebirth", None, BOOLEAN, False)]))
    with pytest.raises(InputError, match="camera id"):
        cmd.parse_trigger("../x", encode_command([("Trigger", None, STRING, "P-1")]), None)
    assert cmd.trigger_status("P-1", {"verdict": "fail", "part_id": "P-1"}) == "fail P-1"
    assert cmd.trigger_status("P-1", {"error": "deadline"}) == "error: deadline P-1"


@pytest.mark.parametrize(("args", "expected"), [
    (["--primary-host", "scada"], "add --sparkplug"),
    (["--sparkplug", "--primary-host", "sca/da"], "--primary-host"),
    (["--sparkplug", "--heatmaps"], "--heatmaps is not available with --sparkplug"),
    (["--sparkplug", "--node", "line 7"], "--box"),
])
def test_sparkplug_options_are_checked_before_anything_starts(args: list[str], expected: str, tmp_path: Path) -> None:
    import subprocess

    from tests.helpers.cli import edge_somad_exe

    out = subprocess.run([edge_somad_exe(), "bridge", "mqtt", "--queue-file", str(tmp_path / "q.sqlite"), *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "error:" in out.stderr and expected in out.stderr, out.stderr

"""benchmarks/peer.py: the peer-shaped PaDiM graphs build, export and run at a small size (kept fast)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from benchmarks import peer  # noqa: E402
from tests.test_trt_tinymodel import make_model_dir  # noqa: E402


@pytest.mark.parametrize(("name", "total"), [("peer-light", 64), ("peer-deep", 448)])
def test_peer_graph_exports_with_expected_shapes(tmp_path: Path, name: str, total: int) -> None:
    stages, channels = peer.PEERS[name]
    net = peer.PeerPadim(stages, channels, 64, 64, sigma=4.0, top=0.01).eval()
    assert sum(peer.STAGE_CHANNELS[:stages]) == total and net.inv_cov.shape == (16 * 16, channels, channels)
    frames = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    with torch.inference_mode():
        emb = net.embed(torch.from_numpy(frames))
        want_map, want_score = (t.numpy() for t in net(torch.from_numpy(frames)))
    assert emb.shape == (2, 16 * 16, channels)  # stride-4 grid, the random channel subset
    path = peer.export_peer(net, tmp_path / f"{name}.onnx")
    amap, score = peer.open_session(path, threads=1).run(["anomaly_map", "score"], {"frames": frames})
    assert amap.shape == (2, 64, 64) and score.shape == (2,) and np.isfinite(amap).all()
    np.testing.assert_allclose(amap, want_map, rtol=1e-3, atol=1e-3)  # the export is the torch module
    np.testing.assert_allclose(score, want_score, rtol=1e-3, atol=1e-3)


def test_round_robin_times_every_session_in_rotating_order() -> None:
    order: list[str] = []

    class Fake:
        def __init__(self, name: str) -> None:
            self.name = name

        def run(self, outputs: object, feeds: dict) -> None:
            order.append(self.name)

    times = peer.time_round_robin({n: Fake(n) for n in "abc"}, np.zeros(1), iters=3, warmup=1)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert order == list("abc" + "abc" + "bca" + "cab")  # warm-up, then rotated: no graph always first


def test_main_prints_ratios_and_machine_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = make_model_dir(tmp_path / "tiny")  # 32x48: layer3's grid is 2x3, still valid
    out = tmp_path / "peer.json"
    assert peer.main(["--model", str(model), "--iters", "2", "--warmup", "0", "--threads", "1",
                      "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("machine: ") and f"onnxruntime {ort.__version__}, 1 threads" in text
    assert "accuracy is not" in text
    data = json.loads(out.read_text())
    rows = {r["graph"]: r for r in data["rows"]}
    assert list(rows) == ["ours", "peer-light", "peer-deep"]
    for name in ("peer-light", "peer-deep"):
        r = rows[name]
        assert r["ours_over_peer_p50"] == round(rows["ours"]["p50_ms"] / r["p50_ms"], 2)
        assert r["ours_over_peer_size"] == round(rows["ours"]["file_bytes"] / r["file_bytes"], 2)
    assert rows["peer-deep"]["gflop_per_frame"] > rows["peer-light"]["gflop_per_frame"] > 0


def test_main_refuses_a_directory_without_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert peer.main(["--model", str(tmp_path)]) == 2
    assert "manifest.json not found" in capsys.readouterr().err


def test_also_times_another_model_in_the_same_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, other = make_model_dir(tmp_path / "tiny"), make_model_dir(tmp_path / "other")
    out = tmp_path / "peer.json"
    assert peer.main(["--model", str(model), "--also", str(other), "--iters", "2", "--warmup", "0",
                      "--threads", "1", "--json", str(out)]) == 0
    rows = {r["graph"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["ours", "peer-light", "peer-deep", "also:other"]
    for name in ("ours", "also:other"):  # each against peer-deep of the same run
        assert rows[name]["over_peer_deep_p50"] == round(rows[name]["p50_ms"] / rows["peer-deep"]["p50_ms"], 3)
    assert "also:other: p50 / peer-deep p50 = " in capsys.readouterr().out
    assert peer.main(["--model", str(model), "--also", str(tmp_path)]) == 2  # no manifest there

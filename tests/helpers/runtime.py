"""Shared helpers for the runtime tests (imported by the test_runtime_* modules; holds no tests).

A stand-in model honouring the graph contract: input `frames` uint8 (B, 64, 96, 3) BGR;
anomaly_map = (blue - red) / 255 per pixel, score = max of the map. A grey frame scores 0 (pass),
a pasted pure-blue patch scores 1 (fail at threshold 0.5).
"""

from __future__ import annotations

import socket
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper

from edge_somad.contracts.manifest import (
    Calibration,
    Manifest,
    Preprocessing,
    TensorSpec,
    save_manifest,
    sha256_file,
)

H, W = 64, 96
THRESHOLD = 0.5


def build_onnx(path: Path, height: int = H, width: int = W, input_name: str = "frames", scale: float = 255.0) -> Path:
    """scale: the map is (blue - red) / scale; another scale makes another graph (another sha256)."""
    x = helper.make_tensor_value_info(input_name, TensorProto.UINT8, ["batch", height, width, 3])
    amap = helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["batch", height, width])
    score = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])
    nodes = [
        helper.make_node("Cast", [input_name], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Gather", ["xf", "i_blue"], ["blue"], axis=3),
        helper.make_node("Gather", ["xf", "i_red"], ["red"], axis=3),
        helper.make_node("Sub", ["blue", "red"], ["diff"]),
        helper.make_node("Div", ["diff", "c255"], ["anomaly_map"]),
        helper.make_node("ReduceMax", ["anomaly_map"], ["score"], axes=[1, 2], keepdims=0),
    ]
    inits = [
        helper.make_tensor("i_blue", TensorProto.INT64, [], [0]),
        helper.make_tensor("i_red", TensorProto.INT64, [], [2]),
        helper.make_tensor("c255", TensorProto.FLOAT, [], [scale]),
    ]
    graph = helper.make_graph(nodes, "standin", [x], [amap, score], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_model_dir(root: Path, threshold: float | None = THRESHOLD, pixel_threshold: float | None = 0.5,
                   resize: str = "letterbox", int8: bool = False, engines: tuple = (), scale: float = 255.0,
                   size: tuple[int, int] = (H, W)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    onnx_path = build_onnx(root / "model.onnx", *size, scale=scale)
    int8_name = None
    if int8:  # same graph under the int8 name: selection logic only cares that it exists
        int8_name = build_onnx(root / "model.int8.onnx").name
    manifest = Manifest(
        name="standin", onnx="model.onnx", onnx_sha256=sha256_file(onnx_path),
        input=TensorSpec("frames", ("batch", *size, 3), "uint8"),
        outputs=(TensorSpec("anomaly_map", ("batch", *size), "float32"),
                 TensorSpec("score", ("batch",), "float32")),
        preprocessing=Preprocessing(height=size[0], width=size[1], resize=resize),
        threshold=threshold,
        calibration=Calibration(method="manual" if threshold else "none", pixel_threshold=pixel_threshold,
                                min_defect_area_px=4),
        int8_onnx=int8_name, engines=engines,
    )
    save_manifest(root, manifest)
    return root


def make_bundle(root: Path, scale: float = 255.0, reference: bool = True, **kw) -> Path:
    """A stand-in model folder as export writes it: graph, manifest and (unless `reference` is False, as
    before export wrote one) the self-check reference frame with its score. `scale` changes the graph."""
    from edge_somad.contracts.manifest import load_manifest
    from edge_somad.runtime.scorers.ort_scorer import OrtScorer
    from edge_somad.runtime.scorers.reference_frame import write_reference

    d = make_model_dir(root, scale=scale, **kw)
    if reference:
        m = load_manifest(d)
        with OrtScorer(d / m.onnx, m.preprocessing.height, m.preprocessing.width) as scorer:
            save_manifest(d, write_reference(d, m, scorer))
    return d


def grey(h: int = 120, w: int = 160) -> np.ndarray:
    return np.full((h, w, 3), 128, np.uint8)


def defect(h: int = 120, w: int = 160, box: tuple[int, int, int, int] = (40, 30, 24, 20)) -> np.ndarray:
    img = grey(h, w)
    x, y, bw, bh = box
    img[y:y + bh, x:x + bw] = (255, 0, 0)  # pure blue (BGR)
    return img


def write_video(path: Path, frames: list[np.ndarray], fps: float = 30.0) -> Path:
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert vw.isOpened(), "MJPG VideoWriter unavailable"
    for f in frames:
        vw.write(f)
    vw.release()
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_pair() -> int:
    """A port p with p + 1 free as well, for defaults placed beside the publisher (replay = port + 1).

    Two independent free_port() calls can hand out a p whose neighbour some other test holds, which made
    CI fail once with 'Address already in use' on the derived replay endpoint."""
    for _ in range(200):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free pair of adjacent ports on 127.0.0.1")


class FakeDriver:
    """Stands in for cv2.VideoCapture behind CameraSource's opener; subclasses define read()."""

    def __init__(self, spec: object) -> None:
        self.n = 0

    def opened(self) -> bool:
        return True

    def release(self) -> None:
        pass

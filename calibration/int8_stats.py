"""Quantization-aware statistics: refit the Gaussians of the int8 graph on int8 backbone features.

The head's centres and whitening factors describe the fp32 backbone's features. The int8 backbone
produces slightly different features (rounding noise, worst in the tight directions of a node's
covariance), and the whitening amplifies exactly those directions, so good parts score far above
the fp32 ones. Here the int8 graph's own projected patch features of the fit images go through the
same statistics as fit (edge_somad.stats, float64 + Cholesky, same node assignment rule), and the
results replace the centres/whitening initializers of the int8 graph only; model.onnx is untouched.
The SOM nodes (the top-k search keys) stay those of the fp32 fit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import numpy_helper

from edge_somad.artifacts import held_whitening
from edge_somad.contracts.layout import ARRAYS_NAME, split_paths
from edge_somad.data import read_frames
from edge_somad.errors import ArtifactError

if TYPE_CHECKING:
    import torch

    from edge_somad.artifacts import FittedArrays
    from edge_somad.config import FitConfig
    from edge_somad.contracts.manifest import Manifest

log = logging.getLogger(__name__)
FEATURE_BATCH = 8


@dataclass(frozen=True)
class HeadTensors:
    """Names, in one graph, of the projected-feature tensor and the statistics initializers."""

    features: str  # (B, N, d) projected patch features, the input of the distance head
    location: str  # centres (M, d) [somad] or means (N, d) [padim]
    whiten: str  # (M|N, d, d)


def find_initializer(model: onnx.ModelProto, value: np.ndarray, what: str, half: bool = False) -> str:
    """The initializer holding exactly `value` (the fitted array, as exported). `half`: the whitening,
    which graphs exported since artifacts.held_whitening hold at float16 precision (in float16 or
    float32); earlier exports hold it exactly, and stay usable."""
    for init in model.graph.initializer:
        if tuple(init.dims) != value.shape:
            continue
        held = numpy_helper.to_array(init)
        if np.array_equal(held, value) or (half and np.array_equal(held, held_whitening(value).astype(held.dtype))):
            return init.name
    raise ArtifactError(
        f"no initializer of the graph equals the fitted {what} {value.shape} from arrays.npz; "
        "model.onnx was exported from another fit. Re-export (`edge-somad export`) and calibrate again."
    )


def find_head_tensors(model: onnx.ModelProto, location: np.ndarray, whiten: np.ndarray) -> HeadTensors:
    """Locate the head's inputs by value: location init -> (Gather) -> Sub(features, ·)."""
    loc = find_initializer(model, location, "centres/means")
    wht = find_initializer(model, whiten, "whitening", half=True)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    # somad gathers the candidate centre per patch first; padim subtracts the means directly.
    reached = {loc} | {n.output[0] for n in consumers.get(loc, []) if n.op_type == "Gather"}
    for name in reached:
        for node in consumers.get(name, []):
            if node.op_type == "Sub" and node.input[1] == name:
                return HeadTensors(_unblocked(model, node.input[0]), loc, wht)
    raise ArtifactError(
        f"found {loc!r} in the graph but no Sub(features, {loc}) after it; expected the SOMAD head "
        "exported by `edge-somad export`."
    )


def _unblocked(model: onnx.ModelProto, name: str) -> str:
    """The whole feature tensor behind `name`: the Mahalanobis runs on patch blocks (Slice of it)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    while (node := producer.get(name)) is not None and node.op_type == "Slice":
        name = node.input[0]
    return name


def int8_features(model: onnx.ModelProto, features: str, input_name: str, frames: np.ndarray) -> np.ndarray:
    """Run the int8 graph only up to `features` on frames -> (n_images, N, d) float32."""
    import onnxruntime as ort

    sub = _cut_at(model, features)
    sess = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"])
    out = [sess.run([features], {input_name: np.ascontiguousarray(frames[i:i + FEATURE_BATCH])})[0]
           for i in range(0, len(frames), FEATURE_BATCH)]
    feats = np.concatenate(out).astype(np.float32)
    if feats.ndim != 3:
        raise ArtifactError(f"feature tensor {features!r} is {feats.shape}; expected (batch, patches, d)")
    return feats


def _cut_at(model: onnx.ModelProto, output: str) -> onnx.ModelProto:
    """Copy of model whose only output is `output`, keeping just the nodes it depends on.

    Saves running the (float) distance head for nothing. Not onnx.utils.Extractor: it needs
    inferred shapes for the cut tensor, which shape inference does not always provide.
    """
    # Node indices, not id(): protobuf hands out fresh wrapper objects on each access.
    all_nodes = list(model.graph.node)
    producer = {out: i for i, node in enumerate(all_nodes) for out in node.output}
    keep: set[int] = set()
    stack = [output]
    while stack:
        i = producer.get(stack.pop())
        if i is not None and i not in keep:
            keep.add(i)
            stack.extend(all_nodes[i].input)
    nodes = [all_nodes[i] for i in sorted(keep)]
    used = {i for n in nodes for i in n.input}
    graph = onnx.helper.make_graph(
        nodes, "int8_features", list(model.graph.input),
        [onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None)],
        [i for i in model.graph.initializer if i.name in used],
    )
    return onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)


def refit_statistics(model_dir: Path, int8_path: Path, fit_frames: np.ndarray) -> dict[str, object]:
    """Replace the centres/whitening of int8_path with statistics of its own features; returns a report."""
    import torch

    from edge_somad.artifacts import load_arrays, load_config
    from edge_somad.som import best_matching_units
    from edge_somad.stats import node_statistics, positional_statistics

    config = load_config(model_dir)
    arrays = load_arrays(model_dir, config)
    if config.method == "somad" and config.head != "full":
        raise ArtifactError(f"{model_dir} has head={config.head}: its int8 refit is calibration/int8_lowrank.py "
                            "(refit_head_statistics picks the right one)")
    location = arrays.centers if config.method == "somad" else arrays.means
    model = onnx.load(str(int8_path))
    head = find_head_tensors(model, location, arrays.whiten)
    feats = torch.from_numpy(int8_features(model, head.features, model.graph.input[0].name, fit_frames))
    if config.method == "somad":
        flat = feats.reshape(-1, feats.shape[-1])
        nodes = torch.from_numpy(arrays.nodes)
        # Same rule as fit: each training patch belongs to its best-matching SOM node.
        stats = node_statistics(flat, best_matching_units(flat, nodes), nodes, config.eps, config.shrinkage)
        new_location, new_whiten = stats.centers.numpy(), stats.whiten.numpy()
    else:
        means, whiten = positional_statistics(feats, config.eps)
        new_location, new_whiten = means.numpy(), whiten.numpy()
    shift = float(np.linalg.norm(new_location - location, axis=-1).mean())
    replace_initializer(model, head.location, new_location)
    replace_initializer(model, head.whiten, new_whiten, half=True)
    tensors = [head.location, head.whiten]
    if config.score_norm != "none":
        tensors += _refit_norm(model, arrays, config, feats, new_location, new_whiten)
    onnx.save(model, str(int8_path))
    log.info("int8 statistics refit on %d images; mean centre shift %.4g", len(fit_frames), shift)
    return {"images": len(fit_frames), "patches": int(feats.shape[0] * feats.shape[1]),
            "tensors": tensors, "mean_center_shift": shift}


def _refit_norm(model: onnx.ModelProto, arrays: FittedArrays, config: FitConfig, feats: torch.Tensor,
                location: np.ndarray, whiten: np.ndarray) -> list[str]:
    """The per-position score statistics, re-measured on the int8 graph's own training maps."""
    import dataclasses

    key = "centers" if config.method == "somad" else "means"
    return refit_norm(model, arrays, dataclasses.replace(arrays, whiten=whiten, **{key: location}), config, feats)


def refit_norm(model: onnx.ModelProto, arrays: FittedArrays, int8_arrays: FittedArrays, config: FitConfig,
               feats: torch.Tensor) -> list[str]:
    """Replace the graph's per-position score mean and 1/std (those of `arrays`) by int8_arrays' own."""
    import dataclasses

    from edge_somad.fit import with_position_norm

    int8_arrays = dataclasses.replace(int8_arrays, norm_mean=None, norm_std=None)
    refit = with_position_norm(int8_arrays, config, feats)
    names = [find_initializer(model, arrays.norm_mean, "score mean"),
             find_initializer(model, (1.0 / arrays.norm_std).astype(np.float32), "score 1/std")]
    replace_initializer(model, names[0], refit.norm_mean)
    replace_initializer(model, names[1], (1.0 / refit.norm_std).astype(np.float32))
    return names


def replace_initializer(model: onnx.ModelProto, name: str, value: np.ndarray, half: bool = False) -> None:
    for init in model.graph.initializer:
        if init.name == name:
            old = numpy_helper.to_array(init)
            if half:  # the whitening: held like the fp32 graph's (artifacts.held_whitening), in its dtype
                value = held_whitening(value).astype(old.dtype)
            if old.shape != value.shape or old.dtype != value.dtype:
                raise ArtifactError(f"refit {name} is {value.dtype}{value.shape}; graph holds {old.dtype}{old.shape}")
            init.CopyFrom(numpy_helper.from_array(value, name))
            return
    raise ArtifactError(f"initializer {name!r} vanished from the int8 graph")


def fit_frames_for(model_dir: Path, manifest: Manifest) -> tuple[np.ndarray | None, str]:
    """The fit images (split.json train) for the int8 statistics refit, or (None, why not).

    Without arrays.npz or the training split (e.g. a deployed box holding only the ONNX) the int8
    graph keeps the fp32 fit's statistics; the reason is printed and stored, never hidden.
    """
    if not (Path(model_dir) / ARRAYS_NAME).is_file():
        why = f"fp32 fit's (no {ARRAYS_NAME} in {model_dir} to refit from; int8 scores run high)"
    else:
        try:
            paths = split_paths(model_dir, "train")
        except ArtifactError as exc:
            paths, why = [], f"fp32 fit's ({exc})"
        else:
            why = "fp32 fit's (split.json lists no training images)"
        if paths:
            return read_frames(paths, manifest), f"refit on int8 features of {len(paths)} training-split images"
    log.warning("int8 statistics: %s", why)
    return None, why

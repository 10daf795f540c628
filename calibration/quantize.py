"""INT8 explicit quantization (Q/DQ nodes) of the fused graph for TensorRT / ONNX Runtime.

Only the backbone's convolutions are quantized. The head after the backbone (projection, SOM node
search, Mahalanobis distance, top-k, sqrt, smoothing, max) stays float32: it computes raw distances
whose absolute value IS the decision (manifest.threshold is in those units), the squared distance
sums d squared terms so an 8-bit step error grows with d, and the score is a max over the map, so
any rounding of a map value moves the score one-to-one. An int8 smoothing conv on the map would
quantize the score itself to 1/127 of the map's range.

Two measures keep int8 within 0.005 AUROC/PRO of fp32 (MVTec bottle, docs in calibrate --int8):
- Conv outputs are not quantized. Every backbone Conv is followed by ReLU6 (Clip 0..6) or a
  residual Add; a Q/DQ on the raw Conv output takes its scale from the pre-activation range (up to
  ~100 in EfficientNet-Lite0), leaving ~7 levels for 0..6, which made int8 features 40% off fp32.
  Only Conv inputs (the activation after Clip/Add, and weights) carry Q/DQ, as TensorRT expects.
- Quantization-aware statistics (calibration/int8_stats.py): with `fit_frames`, the int8 graph's
  centres/whitening are refit on the int8 backbone's own features of the fit images.

The same graph gives the same numbers on every x86-64 CPU. ONNX Runtime's CPU EP runs a quantized
Conv whose output stays float as DequantizeLinear + float Conv, and fuses DQ -> Conv -> Q (a Conv
whose output is another quantized Conv's input: the project convs of blocks without a residual)
into QLinearConv, an integer kernel. On x86 that kernel shifts int8 activations to uint8 and
multiplies u8 x s8; without VNNI (AVX2, AVX-512 without VNNI, SSE4.1) it uses VPMADDUBSW, which
adds two u8*s8 products into a *saturating* int16: 2 * 255 * 127 = 64770 > 32767, so full-range
weights clip there and not on a VNNI CPU. Those Convs get 7-bit weights (reduce_range: |w| <= 64,
and 2 * 255 * 64 = 32640 cannot saturate; `u8s8_pair_bound` checks every written graph); the
others keep 8 bits, which they only ever use in float. 7 bits everywhere cost bottle PRO 0.0044
against fp32 instead of 0.0020. U8U8 would avoid saturation too, but TensorRT runs only signed
int8 Q/DQ; S8S8 alone does not, since ORT turns s8 activations into u8 on x86.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from edge_somad.contracts.manifest import load_manifest, save_manifest, sha256_file
from edge_somad.errors import ArtifactError, InputError
from edge_somad.export.onnx_graph import store_half

log = logging.getLogger(__name__)

# Op types that start the SOMAD head: the multi-scale fusion (Resize/Concat of backbone stages),
# then projection, node search and distances. Every Conv downstream of one of them (the 1x1
# projection after the Concat, the Gaussian smoothing of the map) stays float. Only nodes on the
# data path count: torch exports also use Concat/Gather on shape tensors (Shape -> … -> Reshape),
# which must not mark the backbone as head.
HEAD_OP_TYPES = frozenset(
    {"Resize", "Concat", "MatMul", "Gemm", "Einsum", "TopK", "ReduceMin", "ArgMin", "Sqrt"}
)
# Ops whose output is metadata about a tensor, not pixels/features derived from it.
SHAPE_OP_TYPES = frozenset({"Shape", "Size"})
CALIBRATION_BATCH = 8
# VPMADDUBSW (x86 u8s8 without VNNI) sums two u8*s8 products into a saturating int16.
INT16_MAX = 32767
U8_MAX = 255  # ORT on x86 shifts int8 activations to uint8 (zero point + 128): any value 0..255


class FrameReader(CalibrationDataReader):
    """onnxruntime CalibrationDataReader over uint8 NHWC BGR frames, in batches."""

    def __init__(self, input_name: str, frames: np.ndarray, batch: int = CALIBRATION_BATCH) -> None:
        self._name = input_name
        self._batches = [np.ascontiguousarray(frames[i:i + batch]) for i in range(0, len(frames), batch)]
        self._it: Iterator[np.ndarray] = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {self._name: batch}

    def rewind(self) -> None:
        self._it = iter(self._batches)


def _descendants(nodes: list[onnx.NodeProto], sources: list[int]) -> set[int]:
    """Indices of `sources` and every node downstream of them, not crossing Shape/Size."""
    # Indices, not id(): protobuf hands out fresh wrapper objects, so id() of a node is not stable.
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    seen: set[int] = set()
    stack = list(sources)
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        if nodes[i].op_type not in SHAPE_OP_TYPES:
            for out in nodes[i].output:
                stack.extend(consumers.get(out, ()))
    return seen


def backbone_convs(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """Split Conv node names into (backbone, head); head = downstream of a data-path HEAD_OP_TYPES node."""
    nodes = list(model.graph.node)
    # Old exporters list weights as graph inputs too; only the real inputs (frames) start data.
    inputs = {i.name for i in model.graph.input} - {i.name for i in model.graph.initializer}
    data_path = _descendants(nodes, [i for i, n in enumerate(nodes) if set(n.input) & inputs])
    head = _descendants(nodes, [i for i in data_path if nodes[i].op_type in HEAD_OP_TYPES])
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    return [nodes[i].name for i in convs if i not in head], [nodes[i].name for i in convs if i in head]


def _named(model: onnx.ModelProto) -> None:
    """quantize_static selects nodes by name; give anonymous nodes unique names."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def _check_frames(frames: np.ndarray, height: int, width: int) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 \
            or frames.shape[1:] != (height, width, 3) or len(frames) == 0:
        got = f"{frames.dtype} {frames.shape}" if isinstance(frames, np.ndarray) else type(frames).__name__
        raise InputError(
            f"calibration frames are {got}; expected uint8 (N>=1, {height}, {width}, 3) BGR. "
            "Resize with edge_somad.contracts.geometry.batch_frames first."
        )


def quantize_int8(
    model_dir: Path, calibration_frames: np.ndarray, out_name: str = "model.int8.onnx",
    fit_frames: np.ndarray | None = None,
) -> Path:
    """Write DIR/out_name, a Q/DQ int8 copy of the fused graph, and record it in the manifest.

    fit_frames: the images the model was fit on (split.json train). When given, the int8 graph's
    Gaussian statistics are refit on its own int8 features of them (needs arrays.npz + torch).
    """
    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir)
    _check_frames(calibration_frames, manifest.preprocessing.height, manifest.preprocessing.width)
    if fit_frames is not None:
        _check_frames(fit_frames, manifest.preprocessing.height, manifest.preprocessing.width)
    out_path = model_dir / out_name
    with tempfile.TemporaryDirectory() as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        try:
            # ONNX shape inference + graph cleanup, as onnxruntime recommends before quantizing. The
            # symbolic pass is for transformers' dynamic dims; our H and W are static.
            quant_pre_process(str(model_dir / manifest.onnx), str(prepped), skip_symbolic_shape=True)
        except Exception as exc:
            log.warning("quant_pre_process failed (%s); quantizing the exported graph as is", exc)
            prepped = model_dir / manifest.onnx
        model = onnx.load(str(prepped))
        _named(model)
        convs, head_convs = backbone_convs(model)
        if not convs:
            raise ArtifactError(
                f"{manifest.onnx} has no Conv before the SOMAD head (head convs: {head_convs}); "
                "nothing to quantize. Expected a CNN backbone graph from `edge-somad export`."
            )
        log.info("quantizing %d backbone Conv nodes; %d head Conv nodes stay float",
                 len(convs), len(head_convs))
        quantize_static(
            model,
            str(out_path),
            FrameReader(manifest.input.name, calibration_frames),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            nodes_to_quantize=convs,
            per_channel=True,
            # TensorRT only runs symmetric int8 (zero point 0) for activations and weights.
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            # No Q/DQ on Conv outputs: their range is the pre-ReLU6 one (see module docstring).
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                           "OpTypesToExcludeOutputQuantization": ["Conv"],
                           # 7-bit weights (|w| <= 64) where ORT runs an integer kernel: no u8s8
                           # pair sum can saturate int16 on any x86 CPU (module docstring).
                           "TensorQuantOverrides": {w: [{"axis": 0, "reduce_range": True}]
                                                    for w in integer_conv_weights(model, convs)}},
        )
    bound = u8s8_pair_bound(onnx.load(str(out_path), load_external_data=False))
    if bound > INT16_MAX:
        raise ArtifactError(
            f"{out_path.name}: a u8 x s8 weight pair of an integer Conv can sum to {bound} > {INT16_MAX}, "
            "which saturates ONNX Runtime's int8 kernels on x86 CPUs without VNNI; expected 7-bit weights "
            "(reduce_range) on every Conv whose output is quantized. This onnxruntime version quantizes "
            "differently: report it with `pip show onnxruntime`."
        )
    if fit_frames is not None:
        from edge_somad.calibration.int8_lowrank import refit_head_statistics

        refit_head_statistics(model_dir, out_path, fit_frames)
    # The quantizer folds the fp32 graph's float16 whitening back to float32 (51 MB at d=64): store
    # it half again, lossless as in the fp32 graph (the refit rounds its values the same way).
    store_half(out_path)
    manifest = dataclasses.replace(manifest, int8_onnx=out_name, int8_onnx_sha256=sha256_file(out_path))
    save_manifest(model_dir, manifest)
    return out_path


def integer_conv_weights(model: onnx.ModelProto, convs: list[str]) -> list[str]:
    """Weight initializers of the Convs (of `convs`) whose output is quantized too: another one's input.

    Those become QLinearConv in ONNX Runtime, an integer kernel; the other quantized Convs keep a
    float output and run as DequantizeLinear + float Conv.
    """
    names, inits = set(convs), {i.name for i in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.name in names]
    quantized = {n.input[0] for n in nodes}
    return [n.input[1] for n in nodes if n.output[0] in quantized and n.input[1] in inits]


def u8s8_pair_bound(model: onnx.ModelProto) -> int:
    """Largest |a0*w0 + a1*w1| an x86 u8 x s8 kernel (VPMADDUBSW) could form in this Q/DQ graph.

    Counts the Convs ONNX Runtime can run as integer kernels: weight from a DequantizeLinear of a
    constant and output read by a QuantizeLinear (DQ -> Conv -> Q, fused into QLinearConv); with a
    float output the Conv runs in float. Activations are bounded by U8_MAX whatever their scale (ORT
    on x86 sees them as uint8), weights by their largest |q - zero point|. At most INT16_MAX: no CPU
    can saturate. 0 when no such Conv exists.
    """
    inits = {i.name: i for i in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    quantized = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    worst = 0
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.output[0] not in quantized:
            continue
        dq = producer.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.int64)
        zp = numpy_helper.to_array(inits[dq.input[2]]).astype(np.int64) if len(dq.input) > 2 and dq.input[2] else 0
        if np.ndim(zp) == 1 and q.ndim > 1:  # per-channel zero points along the output axis
            zp = zp.reshape((-1,) + (1,) * (q.ndim - 1))
        worst = max(worst, 2 * U8_MAX * int(np.abs(q - zp).max()))
    return worst

"""TensorRT backend: one engine, buffers allocated once for max_batch, one CUDA stream.

TensorRT 10+ named-tensor API only (num_io_tensors / get_tensor_name / get_tensor_mode,
set_input_shape, set_tensor_address, execute_async_v3): see the "Migrating I/O Buffer Allocation
to Named Tensors" and "enqueueV2 -> enqueueV3" sections of the TensorRT migration guide
(docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/) and the IExecutionContext bindings in
NVIDIA/TensorRT python/src/infer/pyCore.cpp. GPU memory and the stream come from pycuda on the
device's primary context (the one the CUDA runtime inside TensorRT uses); no torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_somad.contracts.engines import check_engine_compat, engine_path, find_engine, rebuild_command
from edge_somad.contracts.manifest import Manifest
from edge_somad.contracts.names import INPUT_NAME, MAP_NAME, SCORE_NAME
from edge_somad.errors import ArtifactError, EdgeSomadError
from edge_somad.runtime.scorer import ScoreResult, check_batch
from edge_somad.runtime.trt_env import import_pycuda, import_tensorrt

_IO = {INPUT_NAME: np.uint8, MAP_NAME: np.float32, SCORE_NAME: np.float32}


class TensorRTScorer:
    """Scorer protocol on a TensorRT engine built by export.trt_build for this GPU."""

    backend = "tensorrt"

    def __init__(self, model_dir: Path, manifest: Manifest, precision: str) -> None:
        model_dir = Path(model_dir)
        engine_path(model_dir, precision)  # validates the precision name
        info = find_engine(manifest, precision)
        if info is None:
            built = ", ".join(e.precision for e in manifest.engines) or "none"
            raise ArtifactError(
                f"{model_dir} has no {precision} TensorRT engine (built: {built}). "
                f"Build it on this machine: `{rebuild_command(model_dir, precision)}`"
            )
        self.height, self.width = manifest.preprocessing.height, manifest.preprocessing.width
        self.max_batch = info.max_batch
        trt, cuda = import_tensorrt(), import_pycuda()
        self._cuda = cuda
        dev = cuda.Device(0)
        major, minor = dev.compute_capability()
        expected_sha = manifest.int8_onnx_sha256 if precision == "int8" else manifest.onnx_sha256
        check_engine_compat(info, str(trt.__version__), str(dev.name()), f"{major}.{minor}",
                            expected_sha or "", model_dir)
        self.device = str(dev.name())
        self.precision = precision
        # The primary context is shared with the CUDA runtime TensorRT calls into. It is pushed
        # around every use because score() may run on another thread than __init__.
        self._ctx = dev.retain_primary_context()
        self._ctx.push()
        try:
            self._load(trt, model_dir / info.path)
        except BaseException:
            self._ctx.pop()
            self._ctx.detach()
            raise
        self._ctx.pop()

    def _load(self, trt, path: Path) -> None:
        if not path.is_file():
            raise ArtifactError(f"engine {path} named in the manifest is missing; "
                                f"rebuild: `{rebuild_command(path.parent, self.precision)}`")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise ArtifactError(f"TensorRT could not deserialize {path} (see its log); "
                                f"rebuild: `{rebuild_command(path.parent, self.precision)}`")
        self._check_io(trt, path)
        self._context = self._engine.create_execution_context()
        # Resolve the output shapes at max_batch once, then allocate pinned host + device buffers.
        self._context.set_input_shape(INPUT_NAME, (self.max_batch, self.height, self.width, 3))
        cuda = self._cuda
        self._host, self._dev = {}, {}
        for name, dtype in _IO.items():
            shape = tuple(self._context.get_tensor_shape(name))
            self._host[name] = cuda.pagelocked_empty(shape, dtype)
            self._dev[name] = cuda.mem_alloc(self._host[name].nbytes)
            self._context.set_tensor_address(name, int(self._dev[name]))
        self._stream = cuda.Stream()

    def _check_io(self, trt, path: Path) -> None:
        """The engine must have exactly the graph contract's tensors, names and dtypes."""
        # trt.DataType compared directly: trt.nptype() lacks uint8 in some 10.x releases.
        want = {INPUT_NAME: ("in", trt.DataType.UINT8), MAP_NAME: ("out", trt.DataType.FLOAT),
                SCORE_NAME: ("out", trt.DataType.FLOAT)}
        got = {}
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            mode = "in" if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "out"
            got[name] = (mode, self._engine.get_tensor_dtype(name))
        if got != want:
            raise ArtifactError(
                f"engine {path} has I/O {got}; expected the graph contract {want}. "
                f"Rebuild from the current export: `{rebuild_command(path.parent, self.precision)}`"
            )

    def score(self, frames: np.ndarray) -> ScoreResult:
        check_batch(frames, self.height, self.width, self.max_batch)
        b = frames.shape[0]
        cuda, h, d = self._cuda, self._host, self._dev
        self._ctx.push()
        try:
            h[INPUT_NAME][:b] = frames  # into pinned memory: the async copy needs page-locked source
            cuda.memcpy_htod_async(d[INPUT_NAME], h[INPUT_NAME][:b], self._stream)
            self._context.set_input_shape(INPUT_NAME, (b, self.height, self.width, 3))
            if not self._context.execute_async_v3(self._stream.handle):
                raise EdgeSomadError(f"TensorRT execute_async_v3 failed for a batch of {b} (see its log)")
            for name in (MAP_NAME, SCORE_NAME):
                cuda.memcpy_dtoh_async(h[name][:b], d[name], self._stream)
            self._stream.synchronize()
        finally:
            self._ctx.pop()
        # Copies: the pinned buffers are overwritten by the next call.
        return ScoreResult(scores=h[SCORE_NAME][:b].copy(), maps=h[MAP_NAME][:b].copy())

    def close(self) -> None:
        if getattr(self, "_ctx", None) is None:
            return
        self._ctx.push()
        try:
            for buf in getattr(self, "_dev", {}).values():
                buf.free()
            self._dev = {}
            # Release TensorRT objects while the context is current, child before parent.
            for attr in ("_stream", "_context", "_engine", "_runtime"):
                if hasattr(self, attr):
                    delattr(self, attr)
        finally:
            self._ctx.pop()
            self._ctx.detach()
            self._ctx = None

    def __enter__(self) -> TensorRTScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""TensorRT backend: one engine, buffers allocated once for max_batch, one CUDA stream.

TensorRT 10+ named-tensor API only (num_io_tensors / get_tensor_name / get_tensor_mode,
set_input_shape, set_tensor_address, execute_async_v3): see the "Migrating I/O Buffer Allocation
to Named Tensors" and "enqueueV2 -> enqueueV3" sections of the TensorRT migration guide
(docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/) and the IExecutionContext bindings in
NVIDIA/TensorRT python/src/infer/pyCore.cpp. GPU memory, pinned host memory and the stream come
from cuda-python's CUDA runtime bindings (cuda.bindings.runtime, as in the TensorRT Python samples'
common_runtime.py): the runtime API shares the device's primary context with TensorRT; no torch.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from edge_somad.contracts.engines import check_engine_compat, engine_path, find_engine, rebuild_command
from edge_somad.contracts.manifest import Manifest
from edge_somad.contracts.names import INPUT_NAME, MAP_NAME, SCORE_NAME
from edge_somad.errors import ArtifactError, EdgeSomadError
from edge_somad.runtime.scorers.scorer import ScoreResult, check_batch
from edge_somad.runtime.scorers.trt_env import cuda_call, gpu_info, import_cudart, import_tensorrt

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
        self._host: dict[str, np.ndarray] = {}
        self._host_ptrs: list[int] = []
        self._dev: dict[str, int] = {}
        self._stream = None
        trt, cudart = import_tensorrt(), import_cudart()
        self._gpu = 0
        name, capability = gpu_info(self._gpu)
        expected_sha = manifest.int8_onnx_sha256 if precision == "int8" else manifest.onnx_sha256
        check_engine_compat(info, str(trt.__version__), name, capability, expected_sha or "", model_dir)
        self.device = name
        self.precision = precision
        self._cudart = cudart  # from here on, close() has something to free
        try:
            self._load(trt, model_dir / info.path)
        except BaseException:
            self.close()
            raise

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
        cudart = self._cudart
        # The runtime API's current device is per thread: set it wherever CUDA is called.
        cuda_call(cudart, cudart.cudaSetDevice(self._gpu), "cudaSetDevice")
        for name, dtype in _IO.items():
            shape = tuple(self._context.get_tensor_shape(name))
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            host_ptr = int(cuda_call(cudart, cudart.cudaMallocHost(nbytes), "cudaMallocHost"))
            self._host_ptrs.append(host_ptr)
            raw = np.ctypeslib.as_array(ctypes.cast(host_ptr, ctypes.POINTER(ctypes.c_uint8)), (nbytes,))
            self._host[name] = raw.view(dtype).reshape(shape)
            self._dev[name] = int(cuda_call(cudart, cudart.cudaMalloc(nbytes), "cudaMalloc"))
            self._context.set_tensor_address(name, self._dev[name])
        self._stream = cuda_call(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")

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
        cudart, h, d, stream = self._cudart, self._host, self._dev, self._stream
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_call(cudart, cudart.cudaSetDevice(self._gpu), "cudaSetDevice")  # score() may run on another thread
        src = h[INPUT_NAME][:b]
        src[...] = frames  # into pinned memory: the async copy needs a page-locked source
        cuda_call(cudart, cudart.cudaMemcpyAsync(d[INPUT_NAME], src.ctypes.data, src.nbytes, h2d, stream),
                  "cudaMemcpyAsync (frames to the GPU)")
        self._context.set_input_shape(INPUT_NAME, (b, self.height, self.width, 3))
        if not self._context.execute_async_v3(int(stream)):
            raise EdgeSomadError(f"TensorRT execute_async_v3 failed for a batch of {b} (see its log)")
        for name in (MAP_NAME, SCORE_NAME):
            dst = h[name][:b]
            cuda_call(cudart, cudart.cudaMemcpyAsync(dst.ctypes.data, d[name], dst.nbytes, d2h, stream),
                      f"cudaMemcpyAsync ({name} from the GPU)")
        cuda_call(cudart, cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        # Copies: the pinned buffers are overwritten by the next call.
        return ScoreResult(scores=h[SCORE_NAME][:b].copy(), maps=h[MAP_NAME][:b].copy())

    def close(self) -> None:
        """Free the buffers and the stream (idempotent; also undoes a half-finished __init__)."""
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        # TensorRT objects first, child before parent, while the buffers they point at still exist.
        for attr in ("_context", "_engine", "_runtime"):
            if hasattr(self, attr):
                delattr(self, attr)
        self._host = {}  # the numpy views must not outlive the pinned memory they alias
        for ptr in self._dev.values():
            cudart.cudaFree(ptr)
        for ptr in self._host_ptrs:
            cudart.cudaFreeHost(ptr)
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)
        self._dev, self._host_ptrs, self._stream = {}, [], None
        self._cudart = None

    def __enter__(self) -> TensorRTScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

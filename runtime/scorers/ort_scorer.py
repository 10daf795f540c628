"""ONNX Runtime backend of the Scorer protocol (CPU, or CUDA when explicitly requested).

The provider list is checked after the session exists: ONNX Runtime silently drops a provider it
cannot load (e.g. CUDA without libcudnn) and runs on CPU; we refuse instead, because a line that
was sized for GPU latency must not quietly run ten times slower.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from edge_somad.contracts.names import INPUT_NAME, OUTPUT_NAMES
from edge_somad.errors import ArtifactError, BackendUnavailableError, ConfigError
from edge_somad.runtime.scorers.cpu_cores import cpu_lanes
from edge_somad.runtime.scorers.scorer import ScoreResult, check_batch

log = logging.getLogger(__name__)

# Providers that, once asked for, must really run the graph (CPU is always there).
ACCELERATORS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider")


class OrtScorer:
    backend = "onnxruntime"

    def __init__(
        self,
        onnx_path: Path,
        height: int,
        width: int,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_threads: int | None = None,
        lanes: int | None = None,
    ) -> None:
        import onnxruntime as ort

        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise ArtifactError(f"ONNX file {onnx_path} does not exist; run `edge-somad export` first")
        requested = list(providers)
        available = ort.get_available_providers()
        missing = [p for p in requested if p not in available]
        if missing:
            raise BackendUnavailableError(
                f"ONNX Runtime provider(s) {missing} requested; this onnxruntime build offers {available}. "
                "Install onnxruntime-gpu (the [gpu] extra) for CUDA, or choose --backend onnxruntime on CPU."
            )
        opts = ort.SessionOptions()
        if intra_op_threads is not None:
            opts.intra_op_num_threads = int(intra_op_threads)
        if os.environ.get("EDGE_SOMAD_ORT_SPIN", "0") != "1":
            # ORT's idle workers spin-wait by default; on a small edge CPU that steals the cores the
            # capture, resize and publish threads need between and during inferences. Measured on the
            # 2-core dev box (bottle 224x224, `bench --cameras 4`, spin off/on interleaved, machine
            # shared so rough): the pipeline ran 10.3 / 19.0 frames/s with spinning off against
            # 6.9 / 16.7 with it on, although the BARE loop is faster spinning (quiet, batch 1:
            # 38.7 ms against 48.2 ms). The pipeline is what runs on a line, so off;
            # EDGE_SOMAD_ORT_SPIN=1 turns it back on for a lone scorer with nothing beside it.
            # intra_op_num_threads stays at ORT's default, one per physical core.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._sess = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=requested)
        except Exception as exc:  # ORT's own types (InvalidProtobuf, Fail, InvalidGraph) derive from Exception
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300].rstrip(".")
            raise ArtifactError(
                f"{onnx_path} ({onnx_path.stat().st_size} bytes) cannot be loaded by ONNX Runtime {ort.__version__}: "
                f"{first}. The file is corrupt, truncated or not an edge-somad graph (a sha256 in the manifest "
                "only proves it is the file the manifest was written for). Rebuild it where the model was fitted: "
                f"`edge-somad export --model {onnx_path.parent}` (keeps the calibration), then copy model.onnx and "
                "manifest.json here together."
            ) from exc
        active = self._sess.get_providers()
        dropped = [p for p in requested if p in ACCELERATORS and p not in active]
        if dropped:
            raise BackendUnavailableError(
                f"{dropped} was requested but ONNX Runtime is running on {active} (the provider failed to "
                "load: check the CUDA/cuDNN libraries). Refusing to fall back to CPU silently."
            )
        self.device = active[0]
        # On a CPU the graph's cost per image is lowest one image at a time: its Mahalanobis works on
        # patch blocks sized so one image's gathered factors stay in the last-level cache, and a
        # batch of B multiplies that working set by B. Measured (bottle 224x224, 2-core EPYC, ORT
        # 1.32): 44.9 img/s at batch 1, 36.4 at 4, 31.8 at 8. So a CPU session runs a batch image by
        # image (the pipeline still collects frames across cameras; on CUDA the batch goes whole).
        self.whole_batches = self.device != "CPUExecutionProvider"
        self.height, self.width = int(height), int(width)
        self.path = onnx_path
        self.max_batch = self._check_contract()
        self.lanes = 1
        self._lane_sess: Any = None
        self._pool: ThreadPoolExecutor | None = None
        if not self.whole_batches:
            self._open_lanes(ort, opts, requested, cpu_lanes(intra_op_threads) if lanes is None else lanes)
        log.info("onnxruntime scorer on %s (%s)%s", self.device, onnx_path.name,
                 f", {self.lanes} lanes for batches" if self.lanes > 1 else "")

    def _open_lanes(self, ort: Any, opts: Any, providers: list[str], lanes: int) -> None:
        """Frames of a batch scored side by side, one single-threaded run per core.

        One frame on all cores (the session above) has the lowest latency, but its operators split
        each GEMM across the cores and meet at a barrier after every one; with spinning off (see
        above) a worker that arrives first sleeps, and one the kernel preempted for a capture or
        publish thread holds the others up. Frames on separate single-threaded runs share nothing
        but the weights. Measured (bottle 224x224, 2-core EPYC, ORT 1.32, quiet): pairs of frames
        74-77 frames/s on two lanes against 68-69 one after the other on both cores, outputs
        bit-identical. So a batch of two or more goes across the lanes, a single frame on all cores.
        One session serves every lane: InferenceSession.run is thread-safe, and with one intra-op
        thread each run computes on its caller's thread (no weights copied per lane)."""
        if lanes < 1:
            raise ConfigError(f"lanes={lanes}; expected >= 1 (1: every frame on all cores)")
        if lanes == 1:
            return
        lane_opts = ort.SessionOptions()
        lane_opts.intra_op_num_threads = 1
        lane_opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._lane_sess = ort.InferenceSession(str(self.path), sess_options=lane_opts, providers=providers)
        self._pool = ThreadPoolExecutor(lanes, thread_name_prefix="score-lane")
        self.lanes = lanes

    def _check_contract(self) -> int | None:
        """Validate names/types/shapes against the graph contract; returns a static batch or None."""
        inputs = self._sess.get_inputs()
        outputs = {o.name for o in self._sess.get_outputs()}
        got_in = [(i.name, i.type, list(i.shape)) for i in inputs]
        want_in = f"[({INPUT_NAME!r}, 'tensor(uint8)', [batch, {self.height}, {self.width}, 3])]"
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME or inputs[0].type != "tensor(uint8)":
            raise ArtifactError(
                f"{self.path.name}: inputs {got_in}; expected {want_in}. Re-export with `edge-somad export`."
            )
        if not set(OUTPUT_NAMES) <= outputs:
            raise ArtifactError(
                f"{self.path.name}: outputs {sorted(outputs)}; expected {list(OUTPUT_NAMES)}. "
                "Re-export with `edge-somad export`."
            )
        shape = list(inputs[0].shape)
        want = (self.height, self.width, 3)
        bad_dims = len(shape) == 4 and any(
            isinstance(d, int) and d != w for d, w in zip(shape[1:], want, strict=True))
        if len(shape) != 4 or bad_dims:
            raise ArtifactError(
                f"{self.path.name}: input shape {shape}; expected [batch, {self.height}, {self.width}, 3] "
                "(the manifest's preprocessing height/width). The manifest and the graph disagree: re-export."
            )
        return shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None

    def score(self, frames: np.ndarray) -> ScoreResult:
        check_batch(frames, self.height, self.width, self.max_batch)
        if not self.whole_batches and len(frames) > 1:
            if self._pool is not None:
                lane = self._lane_sess
                parts = list(self._pool.map(lambda i: lane.run(list(OUTPUT_NAMES), {INPUT_NAME: frames[i:i + 1]}),
                                            range(len(frames))))
            else:
                parts = [self._sess.run(list(OUTPUT_NAMES), {INPUT_NAME: frames[i:i + 1]})
                         for i in range(len(frames))]
            maps, scores = np.concatenate([m for m, _ in parts]), np.concatenate([s for _, s in parts])
        else:
            maps, scores = self._sess.run(list(OUTPUT_NAMES), {INPUT_NAME: frames})
        return ScoreResult(scores=np.asarray(scores, np.float32), maps=np.asarray(maps, np.float32))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._sess = self._lane_sess = None  # type: ignore[assignment]

    def __enter__(self) -> OrtScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

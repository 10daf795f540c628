"""The model a running line scores with, and putting a new one in its place without stopping it.

`ModelSlot.swap_model(path)` loads the bundle BESIDE the running model: manifest checks (the same
as at start), the graph's sha256 against the manifest, a calibrated threshold, the same input
geometry, frames the cameras deliver still big enough, a scorer opened with the running backend
and precision, warmed up and self-checked on the bundle's reference frame
(runtime/scorers/reference_frame.py). Only then is it installed, under the lock the loop holds
while it prepares and scores one batch: a swap falls between two batches, every frame is scored
wholly by one model, and no frame waits for the load. Any failure keeps the old model and
publishes `model_swap_failed` with the reason; scoring never pauses. `rollback()` goes back to the
model before (kept open, so it works even when its folder is gone), after the same self-check.
`reload()` swaps in the running model's own folder again (SIGHUP). `_status` events:
docs/messages.md, procedure: docs/model-updates.md.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_somad.contracts.geometry import plan_geometry
from edge_somad.contracts.manifest import Manifest, load_manifest
from edge_somad.errors import ArtifactError, ConfigError, EdgeSomadError, InputError
from edge_somad.runtime.health.health import LineHealth
from edge_somad.runtime.messaging import messages
from edge_somad.runtime.pipeline.frames import check_useful_geometry
from edge_somad.runtime.scorers import reference_frame
from edge_somad.runtime.scorers.scorer import Scorer

log = logging.getLogger(__name__)

_GEOMETRY = ("height", "width", "resize", "pad_value", "layout", "channel_order")
_generation = itertools.count()


@dataclass(frozen=True, eq=False)
class LiveModel:
    """One model as the line runs it. A new object at every install (even a rollback to the same scorer),
    so a verdict names the installation it was scored under (compared by identity)."""

    scorer: Scorer
    manifest: Manifest
    precision: str
    path: Path | None = None  # the model folder; None when the caller did not say (reload impossible)
    self_check: str = ""
    probe: float | None = None  # its score of reference_frame.make_frame when loaded: rollback re-checks it
    generation: int = dataclasses.field(default_factory=lambda: next(_generation))

    @functools.cached_property
    def info(self) -> dict[str, Any]:
        """The `model` block of every verdict and heartbeat (one dict per installation, as before swaps)."""
        m = self.manifest
        return {"name": m.name, "onnx_sha256": m.onnx_sha256, "backend": self.scorer.backend,
                "precision": self.precision, "device": self.scorer.device}

    @property
    def threshold(self) -> float | None:
        return self.manifest.threshold_for(self.precision)


def warm_up(scorer: Scorer, manifest: Manifest, model_dir: Path) -> None:
    """First-run allocations (ORT arenas, TensorRT context) happen now, not on the first part; and a
    graph that loads but cannot run fails here, as a clear error, before it scores a part."""
    pre = manifest.preprocessing
    try:
        scorer.score(np.zeros((1, pre.height, pre.width, 3), np.uint8))
    except EdgeSomadError:
        raise
    except Exception as exc:  # backends raise their own types (ORT: Fail, RuntimeException, ...)
        raise ArtifactError(
            f"{model_dir / manifest.onnx}: the graph loaded but failed on a blank {pre.height}x{pre.width} frame "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Rebuild it where the model "
            f"was fitted: `edge-somad export --model {model_dir}` (keeps the calibration)."
        ) from exc


class ModelSlot:
    """The current model (and the one before, for rollback); thread-safe swaps.

    The loop reads `current` once per batch while holding `lock`; `swap_model`, `reload` and
    `rollback` may be called from any thread (control endpoint, folder watcher, signal thread) and
    run one at a time."""

    def __init__(self, current: LiveModel, publish_status: Callable[[dict[str, Any]], Any],
                 max_batch: int = 1, health: LineHealth | None = None, health_lock: Any = None) -> None:
        """`health`: the line's health (with the lock that guards it): a new model must suit the frames its
        cameras deliver, and drift is measured against the new model's references once it is installed."""
        self.current, self.previous = current, None
        self.home = current.path  # the folder `run --model` named: what reload() (SIGHUP) reads again
        self.lock = threading.Lock()  # the loop holds it while it prepares and scores a batch
        self._swap_lock = threading.Lock()  # one swap at a time
        self._publish = publish_status
        self._max_batch = max_batch
        self._health, self._health_lock = health, health_lock or threading.Lock()
        self._pending: list[tuple[LiveModel, dict[str, Any]]] = []  # installed, first verdict not yet out
        self._pending_lock = threading.Lock()
        self._closed = False
        # Called with each model installed, under the lock (before any frame is scored with it): parts of
        # the line that answer on their own (the trigger book's deadline errors) name the model in use.
        self.listeners: list[Callable[[LiveModel], None]] = []

    # -- the three ways in ------------------------------------------------------------------------
    def swap_model(self, path: Path | str, via: str = "api", action: str = "swap") -> dict[str, Any]:
        """Load, check and install the bundle in folder `path`. Returns the event published:
        `model_swapped` (ok true; `first_frame_id` follows in the `_status` event once a frame is
        scored) or `model_swap_failed` (ok false, `reason`). Never raises for a bad bundle."""
        path = Path(path)
        with self._swap_lock:
            old, started = self.current, time.monotonic()
            try:
                if self._closed:
                    raise ConfigError("the line has stopped: there is no running model to replace")
                new = self._load(path, old)
            except Exception as exc:  # any failure keeps the old model; the reason is published
                return self._failed(action, via, str(path), exc)
            return self._install(new, action, via, time.monotonic() - started)

    def reload(self, via: str = "signal") -> dict[str, Any]:
        """The folder the line started with (`run --model`) again, its files replaced in place (re-exported,
        recalibrated): SIGHUP. Also the way back to it after swaps from other folders."""
        path = self.home
        if path is None:
            return self._failed("reload", via, None, ConfigError(
                "the folder of the model this pipeline started with is unknown; give the folder with swap_model(path)"))
        return self.swap_model(path, via=via, action="reload")

    def rollback(self, via: str = "api") -> dict[str, Any]:
        """Back to the model before the last swap (kept loaded), after its self-check."""
        with self._swap_lock:
            before, started = self.previous, time.monotonic()
            if before is None or self._closed:
                return self._failed("rollback", via, None, ConfigError(
                    "the line has stopped: there is no running model to replace" if self._closed else
                    "there is no previous model to go back to: nothing was swapped in since the start"))
            try:  # its files may be gone: the check runs on the scorer kept in memory
                check = _recheck(before)
            except Exception as exc:  # as in swap_model
                return self._failed("rollback", via, str(before.path), exc)
            new = dataclasses.replace(before, self_check=check, generation=next(_generation))
            return self._install(new, "rollback", via, time.monotonic() - started)

    # -- the loop's side --------------------------------------------------------------------------
    def published(self, model: LiveModel | None, camera: str, frame_id: int) -> None:
        """Called (publisher thread) before each verdict goes out: the first verdict scored under a newly
        installed model releases its `model_swapped` event, so the event sits between the last verdict
        of the old model and the first of the new one and names that frame."""
        if not self._pending or model is None:
            return
        with self._pending_lock:
            idx = next((i for i, (m, _) in enumerate(self._pending) if m is model), None)
            if idx is None:
                return
            due, self._pending = self._pending[:idx + 1], self._pending[idx + 1:]
        for i, (_, event) in enumerate(due):  # earlier ones were replaced before scoring any frame
            last = i == len(due) - 1
            self._publish({**event, "at": time.time(), "first_camera": camera if last else None,
                           "first_frame_id": int(frame_id) if last else None})

    def announce_unscored(self) -> None:
        """On shutdown: the `model_swapped` events of models installed after the last frame (no first frame)."""
        with self._pending_lock:
            due, self._pending = self._pending, []
        for _, event in due:
            self._publish({**event, "at": time.time()})

    def close(self) -> None:
        """Close the scorers of the current and the previous model (each once); the line has stopped."""
        with self._swap_lock, self.lock:
            held = [self.current.scorer] + ([self.previous.scorer] if self.previous is not None else [])
            for i, scorer in enumerate(held):
                if all(scorer is not other for other in held[:i]):
                    scorer.close()
            self.previous, self._closed = None, True

    # -- internals ------------------------------------------------------------------------------
    def _frame_shapes(self) -> dict[str, tuple[int, int]]:
        """Each camera's frame size (height, width), for those that delivered one."""
        if self._health is None:
            return {}
        with self._health_lock:
            shots = {cid: cam.resolution for cid, cam in self._health.cameras.items()}
        return {cid: (int(r[0]), int(r[1])) for cid, r in shots.items() if r}

    def _load(self, path: Path, old: LiveModel) -> LiveModel:
        from edge_somad.runtime.scorers.backends import open_scorer

        if not path.is_dir():
            raise ArtifactError(f"{path} is not a folder; expected an exported model folder (manifest.json, "
                                "model.onnx, reference_frame.npz) as `edge-somad export` writes it")
        manifest = load_manifest(path)  # every field checked, and model.onnx's sha256 against the manifest
        if manifest.threshold_for(old.precision) is None:
            raise ArtifactError(f"{path} has no {old.precision} threshold: every verdict would be an error. "
                                f"Calibrate it first: `edge-somad calibrate --model {path}`.")
        _check_geometry(manifest, old.manifest, self._frame_shapes())
        scorer = open_scorer(path, old.scorer.backend, old.precision, manifest=manifest)
        try:
            limit = getattr(scorer, "max_batch", None)
            if limit is not None and limit < self._max_batch:
                raise ConfigError(f"{path}: this graph takes at most {limit} frames per call; the line scores "
                                  f"batches of up to {self._max_batch}. Export it with a dynamic or larger batch.")
            warm_up(scorer, manifest, path)
            check = reference_frame.self_check(path, manifest, scorer, old.precision)
            probe = probe_score(scorer, manifest)
        except BaseException:
            scorer.close()
            raise
        return LiveModel(scorer, manifest, old.precision, path, check, probe)

    def _install(self, new: LiveModel, action: str, via: str, load_s: float) -> dict[str, Any]:
        old, swapped_at = self.current, time.time()
        event = {"schema": messages.STATUS_SCHEMA, "event": "model_swapped", "at": swapped_at, "ok": True,
                 "action": action, "via": via, "old_sha256": old.manifest.onnx_sha256,
                 "new_sha256": new.manifest.onnx_sha256, "old_path": _text(old.path), "new_path": _text(new.path),
                 "model": new.info, "previous_model": old.info, "threshold": new.threshold,
                 "self_check": new.self_check, "swapped_at": swapped_at, "load_s": round(load_s, 3),
                 "first_camera": None, "first_frame_id": None}
        with self.lock:  # waits for the batch being scored: the swap falls between two batches
            dropped = self.previous
            self.previous, self.current = old, new
            with self._pending_lock:  # before any frame can be scored with it: its first verdict finds it
                self._pending.append((new, event))
            if self._health is not None:  # drift against the new model's references from its first frame
                with self._health_lock:
                    self._health.set_reference(new.manifest.reference)
            for listener in self.listeners:
                listener(new)
        if dropped is not None and dropped.scorer is not new.scorer and dropped.scorer is not old.scorer:
            dropped.scorer.close()  # two installs ago: no batch can hold it any more (the lock above)
        log.warning("model %s: %s (%s) -> %s (%s) via %s; %s", action, _text(old.path), old.manifest.onnx_sha256[:12],
                    _text(new.path), new.manifest.onnx_sha256[:12], via, new.self_check)
        return event

    def _failed(self, action: str, via: str, path: str | None, exc: BaseException) -> dict[str, Any]:
        reason = str(exc) if isinstance(exc, EdgeSomadError) else f"{type(exc).__name__}: {exc}"
        running = self.current
        event = {"schema": messages.STATUS_SCHEMA, "event": "model_swap_failed", "at": time.time(), "ok": False,
                 "action": action, "via": via, "path": path, "reason": reason,
                 "running_sha256": running.manifest.onnx_sha256, "running_path": _text(running.path)}
        log.error("model %s of %s refused, still scoring with %s: %s", action, path, running.manifest.onnx_sha256[:12],
                  reason)
        self._publish(event)
        return event


def _check_geometry(new: Manifest, old: Manifest, shapes: dict[str, tuple[int, int]]) -> None:
    """The same model input as the running model, and every camera's frames still big enough for it."""
    a, b = new.preprocessing, old.preprocessing
    diff = [f"{k} {getattr(b, k)!r} -> {getattr(a, k)!r}" for k in _GEOMETRY if getattr(a, k) != getattr(b, k)]
    if diff:
        raise ConfigError(f"the new model's input differs from the running one ({'; '.join(diff)}): the cameras, "
                          "health references and region of interest were set up for the running input. Export it "
                          "with the same input size and resize mode, or restart `run` with the new model.")
    for camera, (h, w) in shapes.items():
        try:
            check_useful_geometry(plan_geometry(h, w, a.height, a.width, a.resize), new)
        except InputError as exc:
            raise ConfigError(f"camera {camera}: {exc}") from exc


def probe_score(scorer: Scorer, manifest: Manifest) -> float:
    """The scorer's score of the generated frame; ArtifactError when the output is not finite."""
    pre = manifest.preprocessing
    result = scorer.score(reference_frame.make_frame(pre.height, pre.width)[None])
    if not (np.isfinite(result.scores).all() and np.isfinite(result.maps).all()):
        raise ArtifactError("self-check: the model scored the generated check frame with non-finite output; "
                            "its backend is broken")
    return float(np.asarray(result.scores)[0])


def _recheck(model: LiveModel) -> str:
    """Rollback's self-check, on the kept scorer (not in use: it is not the current model): finite output,
    and the score it gave the same frame when it was loaded."""
    score = probe_score(model.scorer, model.manifest)
    if model.probe is None:
        return f"check frame scored {score:.6g}; checked finite output only (the model the line started with)"
    tol = max(reference_frame.ABS_TOLERANCE, reference_frame.TOLERANCE.get(model.precision, 0.01) * abs(model.probe))
    if abs(score - model.probe) > tol:
        raise ArtifactError(f"self-check: the previous model now scores the check frame {score:.6g}; it scored "
                            f"{model.probe:.6g} when loaded (tolerance {tol:.3g}). Its backend no longer computes "
                            "the same: restart `run` with the model you want.")
    return f"check frame scored {score:.6g}, as when it was loaded ({model.probe:.6g})"


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)


def control_handlers(slot: ModelSlot) -> dict[str, Callable[[Any], dict[str, Any] | None]]:
    """`swap_model` {"path": DIR} and `rollback` {} for the control endpoint's dispatch table
    (runtime/trigger/control.py: `server.register(name, handler)` for each). The swap runs on its own
    thread and answers when done (load, warm-up and self-check take seconds; the endpoint's thread
    keeps answering triggers meanwhile). The answer is the `_status` event (ok, reason or old/new sha256)
    with `cmd`; a malformed request raises ConfigError, which the endpoint answers as an error."""

    def start(req: Any, name: str, work: Callable[[], dict[str, Any]]) -> None:
        def answer() -> None:
            try:
                event = work()
            except Exception as exc:  # never leave the client without an answer
                log.exception("control %s failed", name)
                event = {"ok": False, "reason": f"{type(exc).__name__}: {exc}"}
            try:
                req.reply({**event, "cmd": name, **({} if event.get("ok") else {"error": event.get("reason")})})
            except OSError:  # the endpoint closed while the swap ran (the line stopped): nobody to answer
                log.warning("control %s: done, but the control endpoint has closed: %s", name, event.get("event"))
        threading.Thread(target=answer, name=f"control-{name}", daemon=True).start()

    def swap(req: Any) -> None:
        body = req.body
        path = body.get("path")
        extra = sorted(set(body) - {"cmd", "path"})
        if not isinstance(path, str) or not 0 < len(path) <= 1024 or "\x00" in path or extra:
            raise ConfigError(f"swap_model request {_shown(body)}; expected {{\"cmd\": \"swap_model\", \"path\": "
                              "\"/models/NAME\"}}: the exported model folder on this box, and nothing else")
        start(req, "swap_model", lambda: slot.swap_model(Path(path), via="control"))

    def rollback(req: Any) -> None:
        if set(req.body) != {"cmd"}:
            raise ConfigError(f"rollback request {_shown(req.body)}; expected {{\"cmd\": \"rollback\"}} alone")
        start(req, "rollback", lambda: slot.rollback(via="control"))

    return {"swap_model": swap, "rollback": rollback}


def _shown(body: Any) -> str:
    text = repr(body)
    return text if len(text) <= 120 else text[:100] + f"... ({len(text)} characters)"

"""Type and range checks of manifest.json, field by field, before a Manifest is built from it.

manifest.json is a file a person can edit (and a file a disk can corrupt): a threshold of "abc",
NaN, -5 or `true` must stop `run` when the model is loaded, naming the field, not crash the
publishing thread at the first scored frame. Every field the runtime reads is checked here; the
error says which field, what arrived, what was expected and how to fix it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

from edge_somad.contracts.names import PRECISIONS, RESIZE_MODES
from edge_somad.errors import ArtifactError

FIX = "Re-export (`edge-somad export --model DIR`) and recalibrate, or correct the value in manifest.json."


class FieldError(ArtifactError):
    """One manifest field is missing or has the wrong type or range."""


def _fail(path: str, value: object, expected: str) -> FieldError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return FieldError(f"manifest field {path!r} is {shown} ({type(value).__name__}); expected {expected}. {FIX}")


Check = Callable[[str, Any], None]


def text(path: str, v: Any) -> None:
    if not isinstance(v, str) or not v:
        raise _fail(path, v, "a non-empty string")


def opt_text(path: str, v: Any) -> None:
    if v is not None:
        text(path, v)


def _number(v: Any) -> bool:
    # bool is an int in Python; `true` as a threshold is a typo, not 1.
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def positive(path: str, v: Any) -> None:
    if not _number(v) or v <= 0:
        raise _fail(path, v, "a finite number > 0")


def opt_positive(path: str, v: Any) -> None:
    if v is not None:
        positive(path, v)


def finite(path: str, v: Any) -> None:
    if not _number(v):
        raise _fail(path, v, "a finite number")


def count(path: str, v: Any, low: int = 0) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise _fail(path, v, f"an integer >= {low}")


def one_of(choices: tuple[str, ...]) -> Check:
    def check(path: str, v: Any) -> None:
        if v not in choices:
            raise _fail(path, v, f"one of {choices}")
    return check


def obj(path: str, v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _fail(path, v, "a JSON object")
    return v


def seq(path: str, v: Any, length: int | None = None) -> list[Any]:
    if not isinstance(v, (list, tuple)) or (length is not None and len(v) != length):
        raise _fail(path, v, "a list" if length is None else f"a list of {length}")
    return list(v)


def fields(path: str, data: Any, required: dict[str, Check], optional: dict[str, Check]) -> None:
    """Every required key present, no unknown key, each value passing its check."""
    d = obj(path, data)
    prefix = f"{path}." if path else ""
    for key in required:
        if key not in d:
            raise FieldError(f"manifest field {prefix + key!r} is missing. {FIX}")
    known = {**required, **optional}
    for key, value in d.items():
        if key not in known:
            raise FieldError(f"manifest field {prefix + str(key)!r} is not a manifest field (expected only "
                             f"{sorted(known)}). {FIX}")
        known[key](prefix + key, value)


def tensor(path: str, v: Any) -> None:
    fields(path, v, {"name": text, "shape": _shape, "dtype": text}, {})


def _shape(path: str, v: Any) -> None:
    for i, dim in enumerate(seq(path, v)):
        if isinstance(dim, str):
            continue  # a named dynamic axis ("batch")
        count(f"{path}[{i}]", dim, 1)


def _triple(low_exclusive: float | None) -> Check:
    def check(path: str, v: Any) -> None:
        for i, x in enumerate(seq(path, v, 3)):
            (positive if low_exclusive == 0 else finite)(f"{path}[{i}]", x)
    return check


def _pad(path: str, v: Any) -> None:
    count(path, v, 0)
    if v > 255:
        raise _fail(path, v, "an integer 0..255")


def preprocessing(path: str, v: Any) -> None:
    fields(path, v, {"height": lambda p, x: count(p, x, 1), "width": lambda p, x: count(p, x, 1),
                     "resize": one_of(RESIZE_MODES)},
           {"pad_value": _pad, "interpolation": text, "layout": text, "channel_order": text, "in_graph": text,
            "mean": _triple(None), "std": _triple(0)})


def _frr(path: str, v: Any) -> None:
    if v is not None and (not _number(v) or not 0 < v < 1):
        raise _fail(path, v, "a number between 0 and 1 (exclusive) or null")


def calibration(path: str, v: Any) -> None:
    fields(path, v, {}, {"method": text, "target_frr": _frr, "n_images": count, "pixel_threshold": opt_positive,
                         "min_defect_area_px": count, "details": obj})


def _precision_map(path: str, v: Any) -> None:
    for key, value in obj(path, v).items():
        one_of(PRECISIONS)(f"{path} key", key)
        positive(f"{path}.{key}", value)


def engine(path: str, v: Any) -> None:
    fields(path, v, {"path": text, "precision": one_of(PRECISIONS), "tensorrt_version": text, "gpu_name": text,
                     "compute_capability": text, "onnx_sha256": text},
           {"max_batch": lambda p, x: count(p, x, 1)})


def _engines(path: str, v: Any) -> None:
    for i, e in enumerate(seq(path, v)):
        engine(f"{path}[{i}]", e)


def _outputs(path: str, v: Any) -> None:
    for i, t in enumerate(seq(path, v)):
        tensor(f"{path}[{i}]", t)


def _metric(path: str, v: Any) -> None:
    d = obj(path, v)
    fields(path, d, {"mean": finite, "std": finite}, {"n": count})
    if d["std"] < 0:
        raise _fail(f"{path}.std", d["std"], "a finite number >= 0")


def _input_reference(path: str, v: Any) -> None:
    d = obj(path, v)
    for key, value in d.items():
        if key in ("n",):
            count(f"{path}.{key}", value)
        elif isinstance(value, dict):  # one block per input metric (runtime/health/drift.INPUT_METRICS)
            _metric(f"{path}.{key}", value)


def _score_reference(path: str, v: Any) -> None:
    d = obj(path, v)
    if "n" in d:
        count(f"{path}.n", d["n"])
    if "quantiles" in d:
        q = seq(f"{path}.quantiles", d["quantiles"])
        for i, x in enumerate(q):
            finite(f"{path}.quantiles[{i}]", x)
        if not q or any(b < a for a, b in itertools.pairwise(q)):
            raise _fail(f"{path}.quantiles", q, "a non-empty, non-decreasing list of numbers")


def _frame_reference(path: str, v: Any) -> None:
    """The self-check frame (runtime/scorers/reference_frame.py): a file in the folder and its score."""
    fields(path, v, {"file": text, "sha256": text, "onnx_sha256": text, "precision": one_of(PRECISIONS),
                     "score": finite}, {"scorer": text})
    if "/" in v["file"] or "\\" in v["file"] or v["file"].startswith("."):
        raise _fail(f"{path}.file", v["file"], "a file name inside the model folder")


def reference(path: str, v: Any) -> None:
    d = obj(path, v)
    if d.get("input"):
        _input_reference(f"{path}.input", d["input"])
    if d.get("scores"):
        _score_reference(f"{path}.scores", d["scores"])
    if d.get("frame"):
        _frame_reference(f"{path}.frame", d["frame"])


MANIFEST_FIELDS: dict[str, Check] = {
    "name": text, "onnx": text, "onnx_sha256": text, "input": tensor, "outputs": _outputs,
    "preprocessing": preprocessing,
}
OPTIONAL_FIELDS: dict[str, Check] = {
    "threshold": opt_positive, "calibration": calibration, "model": obj, "versions": obj,
    "int8_onnx": opt_text, "int8_onnx_sha256": opt_text, "engines": _engines,
    "precision_thresholds": _precision_map, "precision_pixel_thresholds": _precision_map,
    "reference": reference, "schema": text,
}


def check_manifest_dict(data: Any) -> None:
    """Raise FieldError naming the first field of `data` (parsed manifest.json) that is missing,
    unknown, of the wrong type or out of range."""
    fields("", data, MANIFEST_FIELDS, OPTIONAL_FIELDS)

"""Exception types. Each message says what arrived, what was expected and how to fix it."""

from __future__ import annotations


class EdgeSomadError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(EdgeSomadError, ValueError):
    """A setting is out of range or inconsistent with another."""


class ArtifactError(EdgeSomadError):
    """A model directory, manifest or array file is missing, corrupt or of another version."""


class DatasetError(EdgeSomadError):
    """A data folder is missing or not in MVTec layout."""


class WeightsError(EdgeSomadError):
    """Backbone weights are missing or do not match the architecture."""


class InputError(EdgeSomadError, ValueError):
    """A frame or batch has the wrong shape, dtype or channel count."""


class MetricError(EdgeSomadError, ValueError):
    """A metric cannot be computed on what arrived (one class only, mismatched shapes, NaN scores)."""


class BackendUnavailableError(EdgeSomadError):
    """An explicitly requested backend (TensorRT, CUDA) cannot run here. Never silently replaced."""


class EngineMismatchError(EdgeSomadError):
    """A TensorRT engine was built for another GPU, TensorRT version or ONNX file."""


class CameraError(EdgeSomadError):
    """A camera cannot do what was asked: it lacks a feature, refuses a value, or is not connected now."""


class ControlTimeoutError(EdgeSomadError, TimeoutError):
    """A control request (trigger, model swap) got no answer from `run --control` in time."""

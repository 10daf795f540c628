"""The runtime names the active ONNX Runtime flavour and warns when CPU and GPU builds are both installed."""

from __future__ import annotations

import logging
import sys
from importlib import metadata

import pytest

from edge_somad.errors import BackendUnavailableError
from edge_somad.runtime.scorers import ort_flavour


def test_this_install_has_one_flavour_and_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    import onnxruntime as ort

    with caplog.at_level(logging.INFO, logger=ort_flavour.__name__):
        flavour = ort_flavour.check_flavour()
    assert flavour.providers == tuple(ort.get_available_providers())
    assert flavour.active == ("gpu" if "CUDAExecutionProvider" in flavour.providers else "cpu")
    assert len(flavour.installed) == 1 and flavour.conflict is None
    assert f"{flavour.active} build" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_both_builds_installed_is_a_warning_that_names_the_winner(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = metadata.distribution

    def both(name: str) -> metadata.Distribution:
        if name == "onnxruntime-gpu":
            return real("onnxruntime")  # pretend: a second distribution of the same module
        return real(name)

    monkeypatch.setattr(ort_flavour.metadata, "distribution", both)
    with caplog.at_level(logging.INFO, logger=ort_flavour.__name__):
        flavour = ort_flavour.check_flavour()
    assert flavour.installed == ("onnxruntime", "onnxruntime-gpu")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"the active build is {flavour.active}" in warnings[0] and "edge-somad[cpu]" in warnings[0]


def test_no_onnxruntime_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    with pytest.raises(BackendUnavailableError, match=r"edge-somad\[cpu\].*edge-somad\[gpu\]"):
        ort_flavour.detect_flavour()

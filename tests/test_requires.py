"""The test-requirement helpers: a missing component skips locally and fails under CI; GPU needs are probed."""

from __future__ import annotations

import pytest

from tests.helpers import requires


def test_missing_component_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="mosquitto is not available"):
        requires.missing_component("mosquitto", "apt-get install mosquitto")


def test_missing_component_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true and chromium is not available"):
        requires.missing_component("chromium", "scripts/setup.sh installs it")


def test_gpu_needs_are_probed_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(requires.GPU_PROBES, "nvidia-smi", lambda: None)
    monkeypatch.setitem(requires.GPU_PROBES, "tensorrt", lambda: "tensorrt is not installed")
    assert requires.gpu_unavailable(()) is None  # no named need: a GPU at all
    assert requires.gpu_unavailable(("nvidia-smi", "tensorrt")) == "tensorrt is not installed"
    with pytest.raises(ValueError, match="unknown need"):
        requires.gpu_unavailable(("cuda",))

"""Shared pytest setup: every test not marked `gpu` runs on CPU CI (anomalib's auto-marker idea)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
HAZELNUT_ROOT = SHARED_DATA / "hazelnut_toy"
MVTEC_ROOT = SHARED_DATA / "mvtec_ad"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`@pytest.mark.gpu("tensorrt", ...)`: skipped unless each named need is probed usable here."""
    from tests.helpers.requires import gpu_unavailable

    for item in items:
        marks = list(item.iter_markers("gpu"))
        if marks:
            why = gpu_unavailable(tuple(a for m in marks for a in m.args))
            if why:
                item.add_marker(pytest.mark.skip(reason=f"needs a GPU: {why}"))


@pytest.fixture
def fake_camera():
    """Aravis's simulated GigE Vision camera on 127.0.0.1, started for the test and killed after it."""
    from tests.helpers.aravis import FakeCamera, require_aravis

    require_aravis()
    cam = FakeCamera()
    cam.start()
    try:
        yield cam
    finally:
        cam.kill()


TINY_SIZE = (64, 96)  # non-square on purpose: height and width are independent everywhere


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.helpers.synth import make_mvtec

    return make_mvtec(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="session")
def tiny_config():
    from edge_somad.config import FitConfig, InputSpec, SomConfig

    # zscore (not the default) so the parity tests cover every node the graph can hold; the
    # default raw path runs end to end in test_calibration_hazelnut.
    return FitConfig(input=InputSpec(*TINY_SIZE, resize="letterbox"), d=16,
                     som=SomConfig(epochs=2, batch_size=1024), holdout_fraction=0.2, score_norm="zscore")


@pytest.fixture(scope="session")
def tiny_fitted(tmp_path_factory: pytest.TempPathFactory, synth_root: Path, tiny_config) -> Path:
    """A real fit (EfficientNet-Lite0 weights, SOM, node statistics) on synthetic images, unexported."""
    from tests.helpers.synth import fit_widget

    return fit_widget(synth_root, tiny_config, tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_exported(tmp_path_factory: pytest.TempPathFactory, tiny_fitted: Path) -> Path:
    """tiny_fitted, copied and exported: model.onnx + manifest.json (no threshold yet)."""
    import shutil

    from edge_somad.export.exporter import export_model

    out = tmp_path_factory.mktemp("tiny_exported") / "widget"
    shutil.copytree(tiny_fitted, out)
    export_model(out)
    return out

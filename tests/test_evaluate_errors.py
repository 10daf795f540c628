"""`evaluate` on a set it cannot measure is an `error:` line and exit 2, not a traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from edge_somad.cli import app
from edge_somad.contracts.exits import EXIT_ERROR


def test_evaluate_on_only_good_test_images_is_error_exit_2(tmp_path: Path, synth_root: Path,
                                                           tiny_exported: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(synth_root / "widget", root / "widget", ignore=shutil.ignore_patterns("paint"))
    assert sorted(p.name for p in (root / "widget" / "test").iterdir()) == ["good"]
    res = CliRunner().invoke(app, ["evaluate", "--model", str(tiny_exported), "--category", "widget",
                                   "--data-root", str(root), "--report", str(tmp_path / "r.json"),
                                   "--pictures", str(tmp_path / "pics")])
    assert res.exit_code == EXIT_ERROR, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert "error:" in res.output and "only negatives" in res.output and "defect images" in res.output
    assert not (tmp_path / "r.json").exists()

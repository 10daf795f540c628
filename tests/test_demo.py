"""`edge-somad demo`: the main job on the bundled sample ends in exit 0 only when every verdict is right."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from edge_somad.demo import _summarise
from tests.helpers.cli import edge_somad_exe
from tests.helpers.runtime import free_port


def _verdict(frame_id: int, verdict: str) -> dict:
    return {"frame_id": frame_id, "camera": "line1", "verdict": verdict, "score_normalised": 1.0}


def test_a_wrong_or_missing_verdict_is_exit_1_and_all_right_is_0() -> None:
    labels = [0, 1, 1]
    right = [_verdict(0, "pass"), _verdict(1, "fail"), _verdict(2, "fail")]
    assert _summarise(right, labels, {}) == 0
    assert _summarise([right[0], _verdict(1, "pass"), right[2]], labels, {}) == 1  # an escape
    assert _summarise([_verdict(0, "fail"), *right[1:]], labels, {}) == 1  # a false reject
    assert _summarise([right[0], _verdict(1, "error"), right[2]], labels, {}) == 1  # an error is never right
    assert _summarise(right[:2], labels, {}) == 1  # one lost


@pytest.mark.slow
def test_demo_entry_point_judges_every_bundled_part_right(tmp_path: Path) -> None:
    out = subprocess.run([edge_somad_exe(), "demo", "--out", str(tmp_path / "demo"),
                          "--publish", f"tcp://127.0.0.1:{free_port()}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "23 verdicts, 23 match the ground truth" in out.stderr

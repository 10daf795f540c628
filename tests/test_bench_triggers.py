"""`bench --triggers`: trigger -> verdict latency of a real triggered pipeline (stand-in model, a short clip)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_somad.bench.triggers import CAMERA_FPS, bench_triggers, format_triggers_table, parse_rates
from edge_somad.errors import ConfigError
from tests.helpers.runtime import grey, make_model_dir, write_video


def test_every_trigger_is_answered_and_latency_is_at_least_the_scoring(tmp_path: Path):
    model = make_model_dir(tmp_path / "m")
    clip = [grey() for _ in range(10)]
    for i, img in enumerate(clip):
        img[-30:, -40:] = 100 + 5 * i  # not identical frames: no frozen-camera error
    video = write_video(tmp_path / "clip.avi", clip)
    rows = bench_triggers(model, video, "onnxruntime", "fp32", [5.0, 20.0], 6)
    assert [r["triggers_per_s"] for r in rows] == [5.0, 20.0]
    for r in rows:
        assert (r["sent"], r["answered"], r["errors"]) == (6, 6, 0), r
        # the PLC's wait includes the runtime's own trigger -> publish time, which includes the wait for a frame
        assert 0 < r["runtime_p50_ms"] <= r["p50_ms"] <= r["p99_ms"]
        assert r["p99_ms"] < 1000.0 + 1000.0 / CAMERA_FPS
    table = format_triggers_table(rows)
    assert "triggers/s" in table and len(table.splitlines()) == 3


@pytest.mark.parametrize("text", ["", "0", "5,x", "-1", "500"])
def test_bad_rates_are_refused(text):
    with pytest.raises(ConfigError, match="--triggers"):
        parse_rates(text)

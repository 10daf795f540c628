"""fit --method auto: candidates fitted on shared features, the one the selection rule chose written."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_somad.artifacts import load_config
from edge_somad.data import load_category
from edge_somad.errors import ConfigError
from edge_somad.model import load_torch_model
from edge_somad.select import CANDIDATES, Candidate, fit_auto


def test_auto_writes_the_candidate_its_rule_chose_with_the_evidence(tmp_path: Path, synth_root: Path,
                                                                   tiny_config) -> None:
    out = tmp_path / "auto"
    info = fit_auto(load_category(synth_root, "widget"), tiny_config, out, progress=False)
    sel = info["selection"]
    table = {row["candidate"]: row for row in sel["candidates"]}
    assert list(table) == [c.name for c in CANDIDATES]
    for row in table.values():
        for key in ("synthetic_auroc", "pixel_auroc", "pro", "margin", "margin_std"):
            assert 0 <= abs(row[key]) <= 1, (key, row)
        lo, hi = row["margin_interval"]
        assert lo <= hi and row["why"]
    somad = table["somad"]
    assert somad["margin"] == 0 and somad["margin_std"] == 0
    # The rule, read back from the table: another candidate only with a margin beyond its
    # uncertainty and maps no worse than SOMAD's.
    chosen = table[sel["chosen"]]
    assert chosen.get("chosen") is True and sum(bool(r.get("chosen")) for r in table.values()) == 1
    if sel["chosen"] != "somad":
        assert chosen["margin_interval"][0] > 0
        assert chosen["pixel_auroc"] >= somad["pixel_auroc"] - 0.005 and chosen["pro"] >= somad["pro"] - 0.005
    cand = next(c for c in CANDIDATES if c.name == sel["chosen"])
    config = load_config(out)
    assert (config.method, config.score_norm) == (cand.method, cand.score_norm)
    assert sel["n_synthetic"] == 12 * 6 and sel["n_good"] == info["n_holdout_images"]
    assert set(sel["kinds"]) == {"cutpaste", "scratch", "blob", "hairline", "crack", "texture"}
    # The written directory is a complete model of the chosen kind: it loads and scores.
    net = load_torch_model(out)
    with torch.inference_mode():
        amap, score = net(torch.zeros(1, *net.size, 3, dtype=torch.uint8))
    assert amap.shape == (1, *net.size) and np.isfinite(score.numpy()).all()


def test_auto_tie_keeps_the_first_candidate(tmp_path: Path, synth_root: Path, tiny_config) -> None:
    twins = (Candidate("padim-a", "padim", "none"), Candidate("padim-b", "padim", "none"))
    info = fit_auto(load_category(synth_root, "widget"), tiny_config, tmp_path / "m", progress=False,
                    candidates=twins)
    a, b = info["selection"]["candidates"]
    assert a["synthetic_auroc"] == b["synthetic_auroc"] and b["margin"] == 0 and b["margin_std"] == 0
    assert info["selection"]["chosen"] == "padim-a" and b["why"] == "not better than padim-a (margin +0.0000)"


def test_auto_without_holdout_is_a_clear_error(tmp_path: Path, synth_root: Path, tiny_config) -> None:
    config = dataclasses.replace(tiny_config, holdout_fraction=0.0)
    with pytest.raises(ConfigError, match="held-out good images"):
        fit_auto(load_category(synth_root, "widget"), config, tmp_path / "m", progress=False)

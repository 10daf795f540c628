"""fit --method auto: candidates fitted on shared features, the self-check's best one written."""

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


def test_auto_writes_the_candidate_with_the_best_synthetic_auroc(tmp_path: Path, synth_root: Path,
                                                                  tiny_config) -> None:
    out = tmp_path / "auto"
    info = fit_auto(load_category(synth_root, "widget"), tiny_config, out, progress=False)
    sel = info["selection"]
    table = {row["candidate"]: row for row in sel["candidates"]}
    assert list(table) == [c.name for c in CANDIDATES]
    best = max(row["synthetic_auroc"] for row in table.values())
    first_best = next(c for c in CANDIDATES if table[c.name]["synthetic_auroc"] == best)
    assert sel["chosen"] == first_best.name  # ties go to the earlier candidate
    config = load_config(out)
    assert (config.method, config.score_norm) == (first_best.method, first_best.score_norm)
    assert sel["n_synthetic"] >= 20 and sel["n_good"] == info["n_holdout_images"]
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
    assert a["synthetic_auroc"] == b["synthetic_auroc"] and info["selection"]["chosen"] == "padim-a"


def test_auto_without_holdout_is_a_clear_error(tmp_path: Path, synth_root: Path, tiny_config) -> None:
    config = dataclasses.replace(tiny_config, holdout_fraction=0.0)
    with pytest.raises(ConfigError, match="held-out good images"):
        fit_auto(load_category(synth_root, "widget"), config, tmp_path / "m", progress=False)

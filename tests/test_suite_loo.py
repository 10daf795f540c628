"""benchmarks/suite_loo.py: in-sample vs leave-one-category-out choice on constructed rows."""

from __future__ import annotations

import pytest

from benchmarks.suite_loo import choose, leave_one_out


def rows_from(table: dict[str, dict[str, float]]) -> list[dict]:
    return [{"category": c, "setting": s, "v": v} for s, per in table.items() for c, v in per.items()]


def key(r: dict) -> str:
    return r["setting"]


def value(r: dict) -> float:
    return r["v"]


def test_in_sample_picks_the_best_mean_and_loo_never_sees_the_left_out_category() -> None:
    # "tuned" wins the in-sample mean only thanks to category c; without c, "default" is better.
    table = {"default": {"a": 0.90, "b": 0.90, "c": 0.70}, "tuned": {"a": 0.85, "b": 0.86, "c": 0.99}}
    rows = rows_from(table)
    assert choose(rows, ["a", "b", "c"], value, key) == "tuned"
    loo = {ch.category: ch for ch in leave_one_out(rows, ["a", "b", "c"], value, key)}
    # Left out c: chosen on a, b -> default, scored 0.70 on c (the in-sample 0.99 was flattery).
    assert loo["c"].setting == "default" and loo["c"].value == pytest.approx(0.70)
    # Left out a: chosen on b, c -> tuned (mean 0.925 > 0.80), scored on a.
    assert loo["a"].setting == "tuned" and loo["a"].value == pytest.approx(0.85)


@pytest.mark.parametrize(("tuned", "margin", "expected"), [
    (0.904, 0.005, "default"),  # better by 0.004: inside the margin, the default stays
    (0.906, 0.005, "tuned"),  # better by 0.006: outside it, the better setting wins
    (0.904, 0.0, "tuned"),  # no margin: any strictly better mean wins
])
def test_the_default_changes_only_beyond_the_margin(tuned: float, margin: float, expected: str) -> None:
    rows = rows_from({"default": {"a": 0.9, "b": 0.9}, "tuned": {"a": tuned, "b": tuned}})
    assert choose(rows, ["a", "b"], value, key, ["default"], margin) == expected


def test_a_group_is_left_out_whole() -> None:
    # b and c share a source; with b left out, c must not vote: the choice is made on a alone.
    table = {"default": {"a": 0.9, "b": 0.6, "c": 0.6}, "tuned": {"a": 0.8, "b": 0.99, "c": 0.99}}
    rows = rows_from(table)
    plain = {ch.category: ch.setting for ch in leave_one_out(rows, ["a", "b", "c"], value, key)}
    grouped = {ch.category: ch.setting
               for ch in leave_one_out(rows, ["a", "b", "c"], value, key, groups={"b": "g", "c": "g"})}
    assert plain["b"] == "tuned" and grouped["b"] == "default"


@pytest.mark.parametrize(("table", "order", "expected"), [
    ({"x": {"a": 0.9}, "y": {"a": 0.9}}, ["y", "x"], "y"),  # tie: the default (listed first) stays
    ({"x": {"a": 0.9}, "y": {"a": 0.9}}, [], "x"),  # tie, no order: by name
    ({"x": {"a": 0.9}, "y": {"a": 0.9000001}}, ["x"], "y"),  # strictly better replaces the default
])
def test_ties_keep_the_default(table: dict, order: list[str], expected: str) -> None:
    assert choose(rows_from(table), ["a"], value, key, order) == expected


def test_settings_missing_a_category_are_not_chosen_and_none_measured_is_an_error() -> None:
    rows = rows_from({"full": {"a": 0.5, "b": 0.5}, "partial": {"a": 1.0}})
    assert choose(rows, ["a", "b"], value, key) == "full"
    with pytest.raises(ValueError, match="no setting"):
        choose(rows, ["a", "b", "z"], value, key)


@pytest.mark.parametrize(("hw", "expected"), [
    ((900, 900), (224, 224)),  # square stays square
    ((500, 1250), (224, 560)),  # a 2.5:1 strip keeps its aspect, long side a multiple of 16
    ((1600, 800), (448, 224)),  # portrait: the long side is the height
    ((100, 1000), (224, 560)),  # beyond MAX_ASPECT: capped, the rest is letterbox padding
    ((500, 560), (224, 224)),  # nearly square: not worth a non-square graph
])
def test_suite_input_follows_the_parts_aspect(tmp_path, hw: tuple[int, int], expected: tuple[int, int]) -> None:
    import cv2
    import numpy as np

    from benchmarks.suite_engine import input_spec
    from edge_somad.data import Category

    path = tmp_path / "a.png"
    cv2.imwrite(str(path), np.zeros((*hw, 3), np.uint8))
    spec = input_spec(Category("c", tmp_path, (path,), ()))
    assert (spec.height, spec.width) == expected and spec.resize == "letterbox"


def test_threshold_transfer_measures_the_shift_of_test_goods() -> None:
    import numpy as np

    from benchmarks.suite_thresholds import transfer

    rng = np.random.default_rng(0)
    hold = rng.normal(10.0, 1.0, 400)
    good = rng.normal(12.0, 1.0, 400)  # the test goods sit two sigmas higher than the held-out ones
    row = {"hold_scores": hold.tolist(), "test_scores": np.r_[good, [30.0]].tolist(), "test_labels": [0] * 400 + [1]}
    t = transfer(row, "robust@0.005")
    assert t["shift"] == pytest.approx(2.0, abs=0.2)
    assert t["margin"] == pytest.approx(0.58, abs=0.25)  # 2.58 sigma threshold - 2 sigma shift
    assert 0.2 < t["frr"] < 0.4  # about P(N(0,1) > 0.58) = 0.28 of the test goods fail

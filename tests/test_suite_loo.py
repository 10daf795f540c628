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

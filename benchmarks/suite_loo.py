"""In-sample and leave-one-category-out choice of a setting (pure functions on the suite's rows).

In-sample: the setting with the best mean over all categories, scored on those same categories (what
a default chosen on the suite claims). Leave-one-out: for each category, the setting with the best
mean over the *other* categories, scored on the one left out (what a new part can expect). The gap
between the two means is how much the suite flatters its own defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Row = dict[str, Any]


@dataclass(frozen=True)
class Choice:
    setting: str
    category: str | None  # the category left out (None: in-sample, chosen on all)
    value: float | None  # the left-out category's value under `setting` (None when in-sample)


def _by_setting(rows: Sequence[Row], key: Callable[[Row], str]) -> dict[str, dict[str, Row]]:
    out: dict[str, dict[str, Row]] = {}
    for r in rows:
        out.setdefault(key(r), {})[r["category"]] = r
    return out


def choose(rows: Sequence[Row], categories: Sequence[str], value: Callable[[Row], float],
           key: Callable[[Row], str], order: Sequence[str] = (), margin: float = 0.0) -> str:
    """The setting with the highest mean `value` over `categories` (settings missing one are skipped).

    Ties go to the setting listed first in `order` (the shipped default first), then by name. The
    default (order[0]) is kept unless the best beats its mean by more than `margin`: a few test
    images per category make means noisy, and a switch on noise is what the leave-one-out mean punishes.
    """
    table = _by_setting(rows, key)
    rank = {s: i for i, s in enumerate(order)}
    best: tuple[float, int, str] | None = None
    means: dict[str, float] = {}
    for setting, per_cat in table.items():
        if not all(c in per_cat for c in categories):
            continue
        means[setting] = float(np.mean([value(per_cat[c]) for c in categories]))
        cand = (-means[setting], rank.get(setting, len(rank)), setting)
        if best is None or cand < best:
            best = cand
    if best is None:
        raise ValueError(f"no setting was measured on all of {list(categories)}")
    if order and order[0] in means and -best[0] - means[order[0]] <= margin:
        return order[0]
    return best[2]


def leave_one_out(rows: Sequence[Row], categories: Sequence[str], value: Callable[[Row], float],
                  key: Callable[[Row], str], order: Sequence[str] = (),
                  groups: Mapping[str, str] | None = None, margin: float = 0.0) -> list[Choice]:
    """For each category: the setting chosen on the others, and that category's value under it.

    `groups` maps a category to its source (same camera, same maker): a category's whole group is left
    out with it, so a sibling cannot vouch for it.
    """
    table = _by_setting(rows, key)
    group = groups or {}
    out = []
    for c in categories:
        others = [o for o in categories if o != c and (c not in group or group.get(o) != group[c])]
        setting = choose(rows, others, value, key, order, margin)
        out.append(Choice(setting, c, value(table[setting][c])))
    return out


def row_of(rows: Sequence[Row], setting: str, category: str, key: Callable[[Row], str]) -> Row:
    return _by_setting(rows, key)[setting][category]

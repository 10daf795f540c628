"""runtime/pipeline/call_size.py: lanes only while a backlog lasts, one frame per call otherwise."""

from __future__ import annotations

import pytest

from edge_somad.errors import ConfigError
from edge_somad.runtime.pipeline.call_size import CallSize


@pytest.mark.parametrize("lanes, after, waiting, sizes", [
    (2, 4, [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]),  # at line rate: a frame at a time
    (2, 4, [2, 2, 2, 2, 2, 2], [1, 1, 1, 2, 2, 2]),  # a backlog: lanes from the 4th call in a row
    (2, 4, [4, 3, 2, 1, 4, 3, 2, 1], [1] * 8),  # 4 cameras ticking together: a burst, drained one by one
    (2, 4, [2, 2, 2, 2, 0, 2, 2, 2, 2], [1, 1, 1, 2, 1, 1, 1, 1, 2]),  # an empty poll ends the backlog
    (3, 1, [1, 2, 5], [1, 3, 3]),  # backlog at once; as many as there are lanes
    (1, 4, [9] * 6, [1] * 6),  # one lane: never more than one
])
def test_call_size(lanes: int, after: int, waiting: list[int], sizes: list[int]) -> None:
    sizer = CallSize(lanes, after)
    assert [sizer.next(w) for w in waiting] == sizes


@pytest.mark.parametrize("lanes, after", [(0, 4), (2, 0)])
def test_call_size_refuses_nonsense(lanes: int, after: int) -> None:
    with pytest.raises(ConfigError, match="expected >= 1"):
        CallSize(lanes, after)

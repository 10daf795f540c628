"""Deadline-bounded polling: wait for a condition instead of sleeping a guessed time, then assert."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout_s: float = 10.0, interval_s: float = 0.01) -> T:
    """Call `condition` until it returns something truthy or `timeout_s` passes; returns its last value.

    The caller asserts on the returned value, so a timeout fails with the test's own message."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval_s)

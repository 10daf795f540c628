"""Deadline-bounded polling: wait for a condition instead of sleeping a guessed time, then assert."""

from __future__ import annotations

import threading
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


def wait_notified(cond: threading.Condition, predicate: Callable[[], object], timeout_s: float) -> bool:
    """wait_until for state a thread changes under `cond` and notifies (a subscriber's message list):
    True once `predicate()` holds (checked under the lock), False after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    with cond:
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            cond.wait(min(left, 0.2))
    return True

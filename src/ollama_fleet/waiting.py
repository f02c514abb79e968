"""The one poll-until-deadline loop; its clock and sleep are seams for tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    check: Callable[[], T],
    timeout: float,
    *,
    interval: float = 0.05,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `check` until it returns something truthy or `timeout` seconds pass; return its
    last answer either way (the caller says what a falsy one means). `check` runs at least
    once, and once more at the deadline."""
    deadline = clock() + timeout
    while True:
        answer = check()
        if answer or clock() >= deadline:
            return answer
        sleep(min(interval, max(0.0, deadline - clock())))

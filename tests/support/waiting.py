"""Waiting for a real server to get somewhere: one poll loop for every test."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["DEADLINE", "eventually"]

DEADLINE = 60.0
"""Seconds a test waits by default: generous, for a shared 2-core machine."""


def eventually(
    check: Callable[[], Any],
    *,
    what: str,
    deadline: float = DEADLINE,
    every: float = 0.1,
    retry_on: tuple[type[Exception], ...] = (),
) -> Any:
    """Poll ``check`` until it returns something truthy, and return that. An exception of a type
    in ``retry_on`` counts as not yet (an API server still settling). Fails naming ``what`` and
    the last value (or error) after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    last: Any = None
    while time.monotonic() < end:
        try:
            last = check()
        except retry_on as error:
            last = error
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"{what}: not true within {deadline:.0f}s (last: {last!r})")

"""Per-key pauses with backoff: after a failure, a key's items wait, in order, for a while.

The relay holds the events of an ordering key whose publish failed, and sends them again, in
their first order, once the key's wait is over and nothing of it is still in flight. Each failure
in a row doubles the wait, up to a cap; a success resets it. Pure: the caller passes the time
(``time.monotonic()``), so tests need no clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["KeyBackoff"]

T = TypeVar("T")


@dataclass
class _Held(Generic[T]):
    until: float
    items: list[T] = field(default_factory=list)


class KeyBackoff(Generic[T]):
    """Paused keys, each with the items that wait behind its failure."""

    def __init__(self, *, first_seconds: float = 0.5, max_seconds: float = 10.0) -> None:
        self.first_seconds = first_seconds
        self.max_seconds = max_seconds
        self._held: dict[str, _Held[T]] = {}
        self._failures: dict[str, int] = {}  # failures in a row, per key

    def __contains__(self, key: object) -> bool:
        return key in self._held

    def __len__(self) -> int:
        return len(self._held)

    def pause(self, key: str, now: float, *, own: bool) -> float | None:
        """Pause ``key`` after a failure; the wait in seconds if this started a pause, else
        None (already paused). ``own`` is False when the publisher refused the item only because
        the key was paused before (say, in an earlier run): that pause ends at once."""
        if key in self._held:
            return None
        attempt = self._failures.get(key, 0) + 1 if own else 0
        self._failures[key] = attempt
        wait = min(self.max_seconds, self.first_seconds * 2 ** (attempt - 1)) if own else 0.0
        self._held[key] = _Held(now + wait)
        return wait

    def hold(self, key: str, item: T) -> bool:
        """Keep ``item`` behind the paused ``key``; False if the key is not paused."""
        held = self._held.get(key)
        if held is None:
            return False
        held.items.append(item)
        return True

    def succeeded(self, key: str) -> None:
        """A publish for ``key`` went through: its next failure waits the first time again."""
        self._failures.pop(key, None)

    def due(self, now: float, busy: Callable[[str], bool]) -> list[tuple[str, list[T]]]:
        """Keys whose wait is over and that have nothing in flight (``busy``), each with its
        held items in the order they were held; those keys are no longer paused."""
        ready = [k for k, held in self._held.items() if held.until <= now and not busy(k)]
        return [(key, self._held.pop(key).items) for key in ready]

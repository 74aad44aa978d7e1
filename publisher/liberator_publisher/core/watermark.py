"""The relay's checkpoint watermark: where every event before it has been settled.

Stream batches arrive in order; their events are acknowledged in any order. The checkpoint may
move to the end of a batch only when that batch and every batch before it are settled (published
or failed), so a restart never skips an event that was still in flight. Pure.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Stretch", "Watermark"]

P = TypeVar("P")


@dataclass
class Stretch(Generic[P]):
    """One stream batch: where it ends, and how many of its events are still unsettled."""

    position: P
    open: int = 0


class Watermark(Generic[P]):
    """The longest run of settled batches, from the oldest on."""

    def __init__(self) -> None:
        self._stretches: deque[Stretch[P]] = deque()
        self.position: P | None = None
        """The end of the last batch of the run; None before any batch settled."""

    def begin(self, position: P) -> Stretch[P]:
        """A new batch that ends at ``position``; count its events with :meth:`opened`."""
        stretch = Stretch(position)
        self._stretches.append(stretch)
        return stretch

    @staticmethod
    def opened(stretch: Stretch[P]) -> None:
        """One more event of ``stretch`` is in flight."""
        stretch.open += 1

    @staticmethod
    def settled(stretch: Stretch[P]) -> None:
        """One event of ``stretch`` was published or failed."""
        stretch.open -= 1

    def advance(self) -> P | None:
        """Move past every leading batch with nothing open; the new :attr:`position`."""
        while self._stretches and self._stretches[0].open == 0:
            self.position = self._stretches.popleft().position
        return self.position

"""Checkpoints: where each loop resumes, fenced by the leader's epoch.

One document per loop and publisher in the ``liberator.checkpoints`` collection of the watched
database: ``{_id: "<publisher>#capture", token, operationTime, epoch, pod, updatedAt}``.
Every write is a conditional upsert whose filter holds ``epoch <= mine``: when a newer leader has
written (or claimed) the document, the filter misses, the upsert collides on ``_id``, and the
write is refused with :class:`FencedError`. A paused old leader that wakes up therefore cannot
move a checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bson import Timestamp
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

__all__ = ["CHECKPOINT_COLLECTION", "LOOPS", "CheckpointError", "Checkpoints", "FencedError",
           "Position"]

CHECKPOINT_COLLECTION = "liberator.checkpoints"
LOOPS = ("capture", "relay")


class CheckpointError(ValueError):
    """A checkpoint document that cannot be read (edited by hand, say); the publisher parks."""

    def __init__(self, document_id: str, field: str, problem: str) -> None:
        super().__init__(f"checkpoint {document_id!r}: field {field!r} {problem}; delete the "
                         f"document (or run 'liberator publish --reset-checkpoint') after an "
                         f"EventSeed")
        self.field = field


class FencedError(RuntimeError):
    """A checkpoint write from an older epoch: another replica leads now."""


@dataclass(frozen=True)
class Position:
    """Where a change stream resumes: after a resume token, or at a cluster time."""

    token: Mapping[str, Any] | None = None
    """Resume token of the last change handled (``resumeAfter``)."""
    operation_time: Timestamp | None = None
    """Cluster time to start at when no change was seen yet (``startAtOperationTime``)."""

    @property
    def empty(self) -> bool:
        return self.token is None and self.operation_time is None


class Checkpoints:
    """The checkpoints of one publisher (``<namespace>/<name>``)."""

    def __init__(self, collection: Collection[dict[str, Any]], publisher: str) -> None:
        self.collection = collection
        self.publisher = publisher

    def _id(self, loop: str) -> str:
        if loop not in LOOPS:
            raise ValueError(f"unknown loop {loop!r}; expected one of {', '.join(LOOPS)}")
        return f"{self.publisher}#{loop}"

    def load(self, loop: str) -> Position:
        """The saved position of ``loop`` (empty when none was saved)."""
        found = self.collection.find_one({"_id": self._id(loop)})
        if not found:
            return Position()
        token = found.get("token")
        when = found.get("operationTime")
        # Never fall back to "now" on a damaged checkpoint: that would skip changes silently.
        if token is not None and not isinstance(token, Mapping):
            raise CheckpointError(self._id(loop), "token",
                                  f"must be a resume token document, not {type(token).__name__}")
        if when is not None and not isinstance(when, Timestamp):
            raise CheckpointError(self._id(loop), "operationTime",
                                  f"must be a BSON timestamp, not {type(when).__name__}")
        return Position(token=token, operation_time=when)

    def epoch(self, loop: str) -> int:
        """The epoch that last wrote or claimed ``loop``'s checkpoint (0 if none)."""
        found = self.collection.find_one({"_id": self._id(loop)}, {"epoch": 1})
        return int(found.get("epoch", 0)) if found else 0

    def claim(self, epoch: int, pod: str) -> None:
        """Stamp both checkpoints with a new term's epoch, so older terms are refused at once."""
        for loop in LOOPS:
            self._write(loop, epoch, {"epoch": epoch, "pod": pod})

    def save(self, loop: str, epoch: int, position: Position, pod: str) -> None:
        """Move ``loop``'s checkpoint; raises :class:`FencedError` if a newer epoch owns it."""
        self._write(loop, epoch, {"token": position.token,
                                  "operationTime": position.operation_time,
                                  "epoch": epoch, "pod": pod})

    def reset(self) -> int:
        """Delete both checkpoints (the documented recovery from a park); returns how many."""
        result = self.collection.delete_many({"_id": {"$in": [self._id(loop) for loop in LOOPS]}})
        return int(result.deleted_count)

    def _write(self, loop: str, epoch: int, fields: dict[str, Any]) -> None:
        fields = {**fields, "updatedAt": datetime.now(UTC)}
        try:
            self.collection.update_one({"_id": self._id(loop), "epoch": {"$lte": epoch}},
                                       {"$set": fields}, upsert=True)
        except DuplicateKeyError:
            raise FencedError(f"checkpoint {self._id(loop)!r} belongs to a newer epoch than "
                         f"{epoch}; another replica leads") from None

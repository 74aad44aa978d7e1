"""Checkpoints: where each loop resumes, fenced by the leader's epoch.

One document per loop and publisher in the ``liberator.checkpoints`` collection of the watched
database: ``{_id: "<publisher>#capture", token, operationTime, epoch, pod, updatedAt,
claimedAt}``. ``updatedAt`` is when the position was last written (its age is what the status
shows); ``claimedAt`` is when a term stamped its epoch without moving it.

Before the first checkpoint there is the origin, ``{_id: "<publisher>#origin", operationTime,
recordedAt}``: the earliest cluster time at which any replica of the publisher was connected to
MongoDB. A first capture starts there (``startAtOperationTime``), not where its stream happens to
open, so writes made while the replicas started, waited for the lease or connected are captured.

Every write is a conditional upsert whose filter holds ``epoch <= mine``: when a newer leader has
written (or claimed) the document, the filter misses, the upsert collides on ``_id``, and the
write is refused with :class:`FencedError`. A paused old leader that wakes up therefore cannot
move a checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from bson import Timestamp
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, OperationFailure

from liberator_publisher.core.contract import CHECKPOINT_COLLECTION
from liberator_publisher.core.errors import LiberatorError
from liberator_publisher.core.headroom import OplogWindow, token_time

__all__ = [
    "CHECKPOINT_COLLECTION",
    "LOOPS",
    "CheckpointError",
    "Checkpoints",
    "FencedError",
    "Loop",
    "Mark",
    "Position",
    "cluster_time",
    "oplog_window",
]

Loop = Literal["capture", "relay"]
"""The two loops that keep a checkpoint."""
LOOPS: tuple[Loop, ...] = ("capture", "relay")


class CheckpointError(LiberatorError, ValueError):
    """A checkpoint document that cannot be read (edited by hand, say); the publisher parks."""

    def __init__(self, document_id: str, field: str, problem: str) -> None:
        super().__init__(
            f"checkpoint {document_id!r}: field {field!r} {problem}; delete the "
            f"document (or run 'liberator publish --reset-checkpoint') after an "
            f"EventSeed"
        )
        self.field = field


class FencedError(LiberatorError, RuntimeError):
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


def cluster_time(database: Database[dict[str, Any]]) -> Timestamp | None:
    """The cluster time just after the last write MongoDB has applied: one increment past the
    ``operationTime`` of a ``ping`` reply (which every replica set member sends, and which is
    that write's own time), so ``startAtOperationTime`` there returns only later writes. None
    from a server that has no cluster time (a standalone)."""
    when = database.command("ping").get("operationTime")
    if not isinstance(when, Timestamp):
        return None
    if when.inc >= 0xFFFFFFFF:
        return Timestamp(when.time + 1, 0)
    return Timestamp(when.time, when.inc + 1)


@dataclass(frozen=True)
class Mark:
    """What the status shows of one loop's checkpoint."""

    moved_at: datetime
    """When its position was last written."""
    position: Timestamp | None
    """The cluster time of that position; None when the token does not say."""


def oplog_window(client: MongoClient[dict[str, Any]]) -> OplogWindow | str:
    """The oplog's oldest and newest entries, as ``rs.printReplicationInfo()`` reads them
    (``local.oplog.rs`` in ``$natural`` order), or why they cannot be read."""
    oplog = client["local"]["oplog.rs"]
    try:
        oldest = oplog.find_one({}, {"ts": 1}, sort=[("$natural", 1)], max_time_ms=5000)
        newest = oplog.find_one({}, {"ts": 1}, sort=[("$natural", -1)], max_time_ms=5000)
    except OperationFailure as e:
        if e.code in (13, 8000):  # Unauthorized; Atlas's AtlasError for the same
            return (
                "not authorized to read local.oplog.rs: grant the publisher's MongoDB user "
                "the clusterMonitor role (find on local.oplog.rs)"
            )
        return f"reading local.oplog.rs failed: {e}"
    first = oldest.get("ts") if oldest else None
    last = newest.get("ts") if newest else None
    if not isinstance(first, Timestamp) or not isinstance(last, Timestamp):
        return "local.oplog.rs has no entries: MongoDB is not a replica set member"
    return OplogWindow(first, last)


class Checkpoints:
    """The checkpoints of one publisher (``<namespace>/<name>``)."""

    def __init__(self, collection: Collection[dict[str, Any]], publisher: str) -> None:
        self.collection = collection
        self.publisher = publisher

    def _id(self, loop: Loop) -> str:
        if loop not in LOOPS:
            raise ValueError(f"unknown loop {loop!r}; expected one of {', '.join(LOOPS)}")
        return f"{self.publisher}#{loop}"

    def load(self, loop: Loop) -> Position:
        """The saved position of ``loop`` (empty when none was saved)."""
        found = self.collection.find_one({"_id": self._id(loop)})
        if not found:
            return Position()
        token = found.get("token")
        when = found.get("operationTime")
        # Never fall back to "now" on a damaged checkpoint: that would skip changes silently.
        if token is not None and not isinstance(token, Mapping):
            raise CheckpointError(
                self._id(loop),
                "token",
                f"must be a resume token document, not {type(token).__name__}",
            )
        if when is not None and not isinstance(when, Timestamp):
            raise CheckpointError(
                self._id(loop),
                "operationTime",
                f"must be a BSON timestamp, not {type(when).__name__}",
            )
        return Position(token=token, operation_time=when)

    def epoch(self, loop: Loop) -> int:
        """The epoch that last wrote or claimed ``loop``'s checkpoint (0 if none)."""
        found = self.collection.find_one({"_id": self._id(loop)}, {"epoch": 1})
        return int(found.get("epoch", 0)) if found else 0

    def claim(self, epoch: int, pod: str) -> None:
        """Stamp both checkpoints with a new term's epoch, so older terms are refused at once."""
        for loop in LOOPS:
            self._write(loop, epoch, {"epoch": epoch, "pod": pod}, moved=False)

    def marks(self) -> dict[str, Mark]:
        """When each loop's position was last written and the cluster time it stands for
        (loops without a checkpoint are left out): the checkpoint ages and the resume-point
        headroom the status reports."""
        found = self.collection.find(
            {"_id": {"$in": [self._id(loop) for loop in LOOPS]}},
            {"updatedAt": 1, "token": 1, "operationTime": 1},
        )
        prefix = f"{self.publisher}#"
        result: dict[str, Mark] = {}
        for document in found:
            when = document.get("updatedAt")
            if not isinstance(when, datetime):
                continue
            token, start = document.get("token"), document.get("operationTime")
            position = (
                token_time(token)
                if isinstance(token, Mapping)
                else (start if isinstance(start, Timestamp) else None)
            )
            result[str(document["_id"]).removeprefix(prefix)] = Mark(
                when if when.tzinfo else when.replace(tzinfo=UTC), position
            )
        return result

    def save(self, loop: Loop, epoch: int, position: Position, pod: str) -> None:
        """Move ``loop``'s checkpoint; raises :class:`FencedError` if a newer epoch owns it."""
        self._write(
            loop,
            epoch,
            {
                "token": position.token,
                "operationTime": position.operation_time,
                "epoch": epoch,
                "pod": pod,
            },
        )

    def reset(self) -> int:
        """Delete both checkpoints and the origin (the documented recovery from a park); returns
        how many checkpoints there were. The next start records a new origin."""
        result = self.collection.delete_many({"_id": {"$in": [self._id(loop) for loop in LOOPS]}})
        self.collection.delete_one({"_id": self._origin_id})
        return int(result.deleted_count)

    @property
    def _origin_id(self) -> str:
        return f"{self.publisher}#origin"

    def record_origin(self, when: Timestamp) -> None:
        """Keep ``when`` as the origin unless an earlier one is recorded (``$min``)."""
        for _ in range(2):  # two replicas upserting at once: the loser's retry is an update
            try:
                self.collection.update_one(
                    {"_id": self._origin_id},
                    {"$min": {"operationTime": when, "recordedAt": datetime.now(UTC)}},
                    upsert=True,
                )
                return
            except DuplicateKeyError:
                continue

    def origin(self) -> Timestamp | None:
        """The recorded origin, or None."""
        found = self.collection.find_one({"_id": self._origin_id})
        when = found.get("operationTime") if found else None
        if when is not None and not isinstance(when, Timestamp):
            raise CheckpointError(
                self._origin_id,
                "operationTime",
                f"must be a BSON timestamp, not {type(when).__name__}",
            )
        return when

    def restart(self, epoch: int, pod: str, when: Timestamp, done: Mapping[str, Any]) -> None:
        """Carry out a restart request, fenced by ``epoch``: capture starts at ``when``
        (``startAtOperationTime``; the one deliberate move backwards), the relay sweeps what is
        pending (as after ``reset``), the origin becomes ``when``, and ``done`` is recorded so
        the request's id never runs again. Raises :class:`FencedError` under a newer epoch."""
        self._write(
            "capture", epoch, {"token": None, "operationTime": when, "epoch": epoch, "pod": pod}
        )
        self._write(
            "relay", epoch, {"token": None, "operationTime": None, "epoch": epoch, "pod": pod}
        )
        self.collection.update_one(
            {"_id": self._origin_id},
            {"$set": {"operationTime": when, "recordedAt": datetime.now(UTC)}},
            upsert=True,
        )
        # Last: a crash before this line runs the request again, which moves to the same place.
        self._write_id(self._restart_id, epoch, {**done, "epoch": epoch})

    def restart_done(self) -> dict[str, Any] | None:
        """The last restart request carried out (``{id, doneAt, position}``), or None. Kept
        apart from the checkpoints, so ``reset`` does not make a done request run again."""
        found = self.collection.find_one(
            {"_id": self._restart_id}, {"_id": 0, "epoch": 0, "updatedAt": 0}
        )
        return dict(found) if found else None

    @property
    def _restart_id(self) -> str:
        return f"{self.publisher}#restart"

    def _write(
        self,
        loop: Loop,
        epoch: int,
        fields: dict[str, Any],
        *,
        moved: bool = True,
    ) -> None:
        self._write_id(self._id(loop), epoch, fields, moved=moved)

    def _write_id(
        self, document_id: str, epoch: int, fields: dict[str, Any], *, moved: bool = True
    ) -> None:
        fields = {**fields, "updatedAt" if moved else "claimedAt": datetime.now(UTC)}
        try:
            self.collection.update_one(
                {"_id": document_id, "epoch": {"$lte": epoch}}, {"$set": fields}, upsert=True
            )
        except DuplicateKeyError:
            raise FencedError(
                f"checkpoint {document_id!r} belongs to a newer epoch than "
                f"{epoch}; another replica leads"
            ) from None

"""The outbox collection as the sidecar reads and writes it (the document's shape is
core/outbox.py).

Capture inserts unordered, and a duplicate ``_id`` counts as captured already (an event's ``_id``
comes from its change's resume token). The relay finds pending events through its stream
(:data:`PIPELINE`) and its sweep (:func:`pending`, served by :data:`PENDING_INDEX`), and marks
each one ``published`` or ``failed``; every marking counts an attempt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from pymongo import ASCENDING, UpdateOne
from pymongo.collection import Collection
from pymongo.cursor import Cursor
from pymongo.errors import BulkWriteError

from liberator_publisher.core.outbox import FAILED, PENDING, PUBLISHED, OutboxDocument

__all__ = [
    "PENDING_INDEX",
    "PIPELINE",
    "ensure_indexes",
    "insert_outbox",
    "mark_failed",
    "mark_published",
    "pending",
]

DUPLICATE_KEY = 11000

PIPELINE: list[dict[str, Any]] = [
    {
        "$match": {
            "$or": [
                {"operationType": {"$in": ["insert", "replace"]}, "fullDocument.status": PENDING},
                {"operationType": "update", "updateDescription.updatedFields.status": PENDING},
            ]
        }
    },
]
"""The outbox stream: only changes that leave an event pending.

No ``updateLookup``: every event the relay marks ``published`` is an update, and a looked-up
stream would make the server read each of those documents back only for this ``$match`` to drop
it (MongoDB pays that lookup too). Inserts and replaces carry the document; an update to
``pending`` (a republish by flag, rare) is looked up by the relay itself."""
PENDING_INDEX = [("status", ASCENDING), ("capturedAt", ASCENDING), ("clusterTime", ASCENDING)]
"""Serves the sweep: pending events, oldest first, in oplog order."""


def ensure_indexes(outbox: Collection[dict[str, Any]]) -> None:
    """Create the sweep's index (idempotent)."""
    outbox.create_index(PENDING_INDEX, name="liberator_pending")


def insert_outbox(
    outbox: Collection[dict[str, Any]],
    documents: Sequence[OutboxDocument],
) -> set[int]:
    """Insert ``documents`` unordered; return the indexes that were new (not duplicates)."""
    if not documents:
        return set()
    try:
        # A TypedDict is a dict at run time; pymongo's stubs ask for dict[str, Any].
        outbox.insert_many(cast(list[dict[str, Any]], documents), ordered=False)
    except BulkWriteError as error:
        errors = error.details.get("writeErrors", [])
        if not all(_duplicate_id(e) for e in errors):
            raise  # a duplicate on another unique index is a real failure, not "captured"
        duplicates = {int(e["index"]) for e in errors}
        return set(range(len(documents))) - duplicates
    return set(range(len(documents)))


def _duplicate_id(write_error: Mapping[str, Any]) -> bool:
    """Whether a write error is a duplicate ``_id``: the event was captured already."""
    if write_error.get("code") != DUPLICATE_KEY:
        return False
    pattern = write_error.get("keyPattern")
    if isinstance(pattern, Mapping):
        return list(pattern) == ["_id"]
    return "index: _id_ " in str(write_error.get("errmsg", ""))


def pending(
    outbox: Collection[dict[str, Any]],
    min_age_seconds: float,
    limit: int | None,
    batch_size: int,
) -> Cursor[dict[str, Any]]:
    """Pending events captured at least ``min_age_seconds`` ago, in capture (then oplog) order."""
    cutoff = datetime.now(UTC) - timedelta(seconds=min_age_seconds)
    cursor = outbox.find(
        {"status": PENDING, "capturedAt": {"$lte": cutoff}},
        sort=[("capturedAt", ASCENDING), ("clusterTime", ASCENDING)],
        batch_size=batch_size,
    )
    if limit is not None:
        cursor = cursor.limit(limit)
    return cursor


def mark_published(
    outbox: Collection[dict[str, Any]], published: Sequence[tuple[str, str]], now: datetime
) -> None:
    """Mark each ``(event id, message id)`` published at ``now``, in one unordered write."""
    outbox.bulk_write(
        [
            UpdateOne(
                {"_id": event_id},
                {
                    "$set": {"status": PUBLISHED, "publishedAt": now, "messageId": message_id},
                    "$inc": {"attempts": 1},
                },
            )
            for event_id, message_id in published
        ],
        ordered=False,
    )


def mark_failed(outbox: Collection[dict[str, Any]], event_id: str, reason: str) -> None:
    """Mark an event Pub/Sub can never take ``failed``, with the reason."""
    outbox.update_one(
        {"_id": event_id},
        {"$set": {"status": FAILED, "reason": reason}, "$inc": {"attempts": 1}},
    )

"""The stored event: a document per CloudEvent, indexed by time, and a dead letter for a message
that is not one. Pure, but for the index and the insert, which take the collection."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from bson import Binary
from pymongo import ASCENDING
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError

from liberator_publisher.core.cloudevent import parse_message
from liberator_publisher.core.errors import UsageError
from liberator_publisher.core.validation import RESOURCE_ID_RULE, is_resource_id

__all__ = [
    "DEFAULT_COLLECTION",
    "dead_letter_document",
    "ensure_indexes",
    "event_document",
    "insert_ignoring_duplicates",
    "subscription_path",
]

DEFAULT_COLLECTION = "liberator_events"
_DUPLICATE_KEY = 11000


def subscription_path(value: str, project: str | None, flag: str = "--subscription") -> str:
    """A full subscription path from a path or an id (with the project)."""
    if value.startswith("projects/"):
        parts = value.split("/")
        if (
            len(parts) != 4
            or parts[2] != "subscriptions"
            or not parts[1]
            or not is_resource_id(parts[3])
        ):
            raise UsageError(f"{flag}: {value!r} is not projects/<project>/subscriptions/<id>")
        return value
    if not is_resource_id(value):
        raise UsageError(
            f"{flag}: {value!r} is not a subscription id ({RESOURCE_ID_RULE}) or a full path"
        )
    if not project:
        raise UsageError(
            f"{flag}: {value!r} is an id without a project; set "
            "LIBERATOR_PUBSUB_PROJECT (or --project), or give the full path"
        )
    return f"projects/{project}/subscriptions/{value}"


def _storable(value: Any) -> bool:
    """Whether MongoDB can store ``value`` as a sub-document (no ``$`` keys, no NUL)."""
    if isinstance(value, Mapping):
        return all(
            isinstance(k, str) and not k.startswith("$") and "\0" not in k and _storable(v)
            for k, v in value.items()
        )
    if isinstance(value, list):
        return all(_storable(v) for v in value)
    return True


def _version(text: str | None) -> int | str | None:
    if text is None:
        return None
    return int(text) if text.lstrip("-").isdigit() and len(text) < 19 else text


def event_document(
    data: bytes,
    attributes: Mapping[str, str],
    *,
    message_id: str,
    publish_time: datetime | None,
    subscription: str,
    received_at: datetime,
) -> dict[str, Any]:
    """The events-collection document of one message; raises ``MalformedEventError``."""
    event = parse_message(data, attributes)
    try:
        raw: str | Binary = data.decode("utf-8")
    except UnicodeDecodeError:
        raw = Binary(data)
    parsed = event.data if not isinstance(event.data, bytes) else None
    return {
        "_id": event.id,
        "type": event.type,
        "source": event.source,
        "subject": event.subject,
        # ce-time is optional in CloudEvents; without it the publish time orders the event.
        "time": event.time or publish_time or received_at,
        "version": _version(event.extensions.get("entityversion")),
        "attributes": dict(attributes),
        # Only JSON text with '"$' can hold a '$' key; skip the walk for the rest.
        "data": parsed if b'"$' not in data or _storable(parsed) else None,
        "raw": raw,
        "publishTime": publish_time,
        "receivedAt": received_at,
        "subscription": subscription,
        "messageId": message_id,
    }


def dead_letter_document(
    data: bytes,
    attributes: Mapping[str, str],
    *,
    reason: str,
    message_id: str,
    publish_time: datetime | None,
    subscription: str,
    received_at: datetime,
) -> dict[str, Any]:
    """The dead-letter document of a message that is not a CloudEvent (keyed by message)."""
    return {
        "_id": f"{subscription}/{message_id}",
        "reason": reason,
        "attributes": dict(attributes),
        "data": Binary(data),
        "publishTime": publish_time,
        "receivedAt": received_at,
        "subscription": subscription,
        "messageId": message_id,
    }


INDEXES: tuple[tuple[str, list[tuple[str, int]]], ...] = (
    ("time", [("time", ASCENDING)]),
    ("type_time", [("type", ASCENDING), ("time", ASCENDING)]),
    ("subject_time", [("subject", ASCENDING), ("time", ASCENDING)]),
)
"""The events collection's indexes (``_id`` = ``ce-id`` is the unique one)."""


def ensure_indexes(collection: Collection[dict[str, Any]]) -> None:
    """Create the events collection's indexes (idempotent)."""
    for name, keys in INDEXES:
        collection.create_index(keys, name=name)


def insert_ignoring_duplicates(
    collection: Collection[dict[str, Any]], documents: Sequence[dict[str, Any]]
) -> tuple[int, set[int]]:
    """Insert; returns (duplicates, indexes of documents that failed otherwise).

    Raises ``PyMongoError`` when nothing could be written (the server is away).
    """
    if not documents:
        return 0, set()
    try:
        collection.insert_many(list(documents), ordered=False)
    except BulkWriteError as error:
        errors = error.details.get("writeErrors", [])
        duplicates = sum(1 for e in errors if e.get("code") == _DUPLICATE_KEY)
        failed = {int(e["index"]) for e in errors if e.get("code") != _DUPLICATE_KEY}
        return duplicates, failed
    return 0, set()

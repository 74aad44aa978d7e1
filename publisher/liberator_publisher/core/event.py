"""Events: how a change to an entity document becomes an outbox document and a Pub/Sub message.

The format is the Pub/Sub protocol binding for CloudEvents in binary mode: the CloudEvent
attributes are message attributes (``ce-id``, ``ce-type``, ...) and the data is the entity document
in MongoDB relaxed extended JSON. Everything here is pure, so it is tested without servers.

Bad input never raises out of ``outbox_document_for_change``: a document that cannot become a
publishable message gives an outbox document with ``status: "failed"`` and a readable ``reason``,
so one bad document never wedges the stream. The mapping and the id and version it reads are
mapping.py's; the attributes, the data and the outbox document they make are attributes.py's.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import bson
from bson import Timestamp

from liberator_publisher.core.attributes import failed_document, outbox_document
from liberator_publisher.core.encoding import EncodingError, value_to_json
from liberator_publisher.core.mapping import EventMapping, entity_id_text
from liberator_publisher.core.outbox import OutboxDocument

__all__ = [
    "DOCUMENT_OPERATIONS",
    "EventMapping",
    "event_id_for_token",
    "needs_identity",
    "outbox_document_for_change",
    "outbox_document_for_entity",
]
# EventMapping is mapping.py's; it is named here too because capture imports it with the rest.

DOCUMENT_OPERATIONS = ("insert", "update", "replace", "delete")
"""Change stream operation types that become events; others (drop, rename, invalidate) do not."""

# A fixed namespace, so an event id depends on nothing but the resume token.
EVENT_ID_NAMESPACE = uuid.UUID("6f1c2a0e-4b8d-5e3a-9c7f-1d2e3f4a5b6c")
_NO_ATTRIBUTES: Mapping[str, str] = MappingProxyType({})


def event_id_for_token(resume_token: Mapping[str, Any]) -> str:
    """The ``ce-id`` of the change with this resume token: a UUID5 of the token's BSON.

    A re-read change has the same token, so it gets the same id and the outbox insert is a
    duplicate. Raises ``ValueError`` if the token is not a BSON document.
    """
    try:
        encoded = bson.encode(resume_token)
    except (TypeError, bson.errors.InvalidDocument) as error:
        raise ValueError(f"the resume token is not a BSON document: {error}") from None
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, encoded.hex()))


def needs_identity(change: Mapping[str, Any], mapping: EventMapping) -> bool:
    """Whether ``change`` is a delete that names its entity only through a look-up: no
    before-image, and a document key without the id field (a business id)."""
    if change.get("operationType") != "delete":
        return False
    key = change.get("documentKey")
    return (
        not isinstance(change.get("fullDocumentBeforeChange"), Mapping)
        and isinstance(key, Mapping)
        and mapping.id_field not in key
    )


def outbox_document_for_change(
    change: Mapping[str, Any],
    mapping: EventMapping,
    *,
    captured_at: datetime.datetime,
    known_id: Any = None,
) -> OutboxDocument:
    """The outbox document for one change stream event, ``pending`` or ``failed``.

    ``known_id`` is the id field's value last seen for the document of a delete that
    ``needs_identity``; the delete's data is then its key and that id (see
    :mod:`liberator_publisher.state.identity`). Never raises for a bad entity document. Raises
    ``ValueError`` only for a change without a resume token (``_id``), which MongoDB never sends.
    """
    token = change.get("_id")
    if not isinstance(token, Mapping):
        raise ValueError("the change has no resume token (_id); it cannot be given an event id")
    operation = change.get("operationType")
    key = change.get("documentKey")
    base: dict[str, Any] = {
        "_id": event_id_for_token(token),
        "operation": operation,
        "token": token,
        "capturedAt": captured_at,
    }
    if isinstance(key, Mapping) and "_id" in key:
        base["key"] = key["_id"]  # finds this document's entity again for its delete
    if operation not in DOCUMENT_OPERATIONS:
        return failed_document(
            base,
            f"change operation {operation!r} is not a document change "
            f"(only {', '.join(DOCUMENT_OPERATIONS)} become events)",
        )
    time = _change_time(change, captured_at)
    if operation == "delete":
        return _delete(change, mapping, base, time=time, known_id=known_id)
    document = change.get("fullDocument")
    if not isinstance(document, Mapping):
        entity_id = entity_id_text(key, mapping.id_field) if isinstance(key, Mapping) else None
        if isinstance(entity_id, str):
            base["entityId"] = entity_id
        return failed_document(
            base,
            f"the {operation} has no fullDocument (open the stream with "
            f"full_document='updateLookup'; or the document was deleted "
            f"before the lookup, and its delete event follows)",
        )
    return outbox_document(
        document,
        mapping,
        base,
        operation=operation,
        time=time,
        use_context=True,
        extra_attributes=_NO_ATTRIBUTES,
        id_hint="",
    )


def _delete(
    change: Mapping[str, Any],
    mapping: EventMapping,
    base: dict[str, Any],
    *,
    time: datetime.datetime,
    known_id: Any,
) -> OutboxDocument:
    """A delete's outbox document: its data is the before-image, else the document key (with
    ``known_id`` when the key lacks the id field)."""
    before = change.get("fullDocumentBeforeChange")
    state = before if isinstance(before, Mapping) else change.get("documentKey")
    if not isinstance(state, Mapping):
        return failed_document(base, "the delete has neither a document key nor a before-image")
    hint = ""
    if needs_identity(change, mapping):
        if known_id is None:
            return failed_document(
                base,
                (
                    f"the delete of document _id {_short_key(state)} carries only its document "
                    f"key, and Liberator never saw that document (no earlier event in the "
                    f"outbox, not seeded), so its {mapping.id_field!r} is unknown; enable "
                    f"changeStreamPreAndPostImages on the collection, or run an EventSeed so "
                    f"that documents older than the publisher are known"
                ),
            )
        state = {**state, mapping.id_field: known_id}
    elif not isinstance(before, Mapping):
        hint = (
            "; a delete carries only the document key unless the collection has "
            "changeStreamPreAndPostImages enabled"
        )
    return outbox_document(
        state,
        mapping,
        base,
        operation="delete",
        time=time,
        use_context=False,
        extra_attributes=_NO_ATTRIBUTES,
        id_hint=hint,
    )


def outbox_document_for_entity(
    document: Mapping[str, Any],
    mapping: EventMapping,
    *,
    event_id: str,
    operation: str,
    time: datetime.datetime,
    extra_attributes: Mapping[str, str] = _NO_ATTRIBUTES,
) -> OutboxDocument:
    """The outbox document for an entity as it stands (the seed), ``pending`` or ``failed``.

    Same format as ``outbox_document_for_change`` without ``token``; ``capturedAt`` is ``time``.
    ``extra_attributes`` (such as ``{"ce-seed": "true"}``) are added to the attributes. Raises
    ``ValueError`` for bad arguments (not for a bad document).
    """
    if operation not in DOCUMENT_OPERATIONS:
        raise ValueError(
            f"operation must be one of {', '.join(DOCUMENT_OPERATIONS)}, not {operation!r}"
        )
    if not isinstance(event_id, str) or not event_id:
        raise ValueError(f"event_id must be a non-empty string, not {event_id!r}")
    base: dict[str, Any] = {"_id": event_id, "operation": operation, "capturedAt": time}
    return outbox_document(
        document,
        mapping,
        base,
        operation=operation,
        time=time,
        use_context=operation != "delete",
        extra_attributes=extra_attributes,
        id_hint="",
    )


def _change_time(change: Mapping[str, Any], captured_at: datetime.datetime) -> datetime.datetime:
    wall_time = change.get("wallTime")
    if isinstance(wall_time, datetime.datetime):
        return wall_time
    cluster_time = change.get("clusterTime")
    if isinstance(cluster_time, Timestamp):
        return cluster_time.as_datetime()
    return captured_at


def _short_key(key: Mapping[str, Any]) -> str:
    """A document key's ``_id`` as extended JSON, bounded for a reason."""
    try:
        text = value_to_json(key.get("_id"))
    except EncodingError:
        text = repr(key.get("_id"))
    return text if len(text) <= 80 else text[:77] + "..."

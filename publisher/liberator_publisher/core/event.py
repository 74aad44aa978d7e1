"""Events: how a change to an entity document becomes an outbox document and a Pub/Sub message.

The format is the Pub/Sub protocol binding for CloudEvents in binary mode: the CloudEvent
attributes are message attributes (``ce-id``, ``ce-type``, ...) and the data is the entity document
in MongoDB relaxed extended JSON. Everything here is pure, so it is tested without servers.

Bad input never raises out of ``outbox_document_for_change``: a document that cannot become a
publishable message gives an outbox document with ``status: "failed"`` and a readable ``reason``,
so one bad document never wedges the stream.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, cast

import bson
from bson import Binary, ObjectId, Timestamp

from liberator_publisher.core.encoding import EncodingError, to_json, value_to_json
from liberator_publisher.core.message import (
    MAX_ATTRIBUTE_VALUE_BYTES,
    MAX_ORDERING_KEY_BYTES,
    Message,
    Unpublishable,
    check_limits,
    short,
)
from liberator_publisher.core.outbox import FAILED, PENDING, OutboxDocument
from liberator_publisher.core.times import rfc3339

__all__ = [
    "DOCUMENT_OPERATIONS",
    "EventMapping",
    "entity_id_of",
    "event_id_for_token",
    "needs_identity",
    "outbox_document_for_change",
    "outbox_document_for_entity",
    "version_of",
]

DOCUMENT_OPERATIONS = ("insert", "update", "replace", "delete")
"""Change stream operation types that become events; others (drop, rename, invalidate) do not."""

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"
# Keys of the event-context sub-document -> CloudEvent extension attributes.
CONTEXT_EXTENSIONS = (
    ("correlationId", "ce-correlationid"),
    ("causationId", "ce-causationid"),
    ("traceparent", "ce-traceparent"),
)
# A fixed namespace, so an event id depends on nothing but the resume token.
EVENT_ID_NAMESPACE = uuid.UUID("6f1c2a0e-4b8d-5e3a-9c7f-1d2e3f4a5b6c")
_NO_ATTRIBUTES: Mapping[str, str] = MappingProxyType({})
_TYPE_SUFFIX = {"insert": "created", "update": "updated", "replace": "updated", "delete": "deleted"}


@dataclass(frozen=True)
class EventMapping:
    """How documents of one entity collection become CloudEvents."""

    entity_type: str
    """Prefix of derived CloudEvent types: ``quote`` gives ``quote.created``."""
    source: str
    """The CloudEvent ``source`` attribute (a URI reference)."""
    id_field: str = "_id"
    """Top-level field holding the entity id: ``ce-subject`` and the ordering key."""
    version_field: str | None = None
    """Top-level field holding the entity version (``ce-entityversion``); ``None`` for none."""
    event_context_field: str = "_event"
    """Top-level sub-document with ``type``, ``correlationId``, ``causationId``, ``traceparent``;
    it is stripped from the data."""
    exclude_fields: frozenset[str] = field(default_factory=frozenset)
    """Top-level fields left out of the data."""

    def __post_init__(self) -> None:
        for name in ("entity_type", "source", "id_field", "event_context_field"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"EventMapping.{name} must be a non-empty string, not {value!r}")
        if self.version_field is not None and not self.version_field:
            raise ValueError("EventMapping.version_field must be None or a non-empty string")
        if self.event_context_field == self.id_field:
            raise ValueError("EventMapping.event_context_field must differ from id_field")
        # Accept any iterable of names, keep the frozen type.
        object.__setattr__(self, "exclude_fields", frozenset(self.exclude_fields))
        if self.id_field in self.exclude_fields:
            raise ValueError(
                f"EventMapping.exclude_fields must not hold the id field {self.id_field!r}"
            )


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
    event_id = event_id_for_token(token)
    operation = change.get("operationType")
    key = change.get("documentKey")
    base: dict[str, Any] = {
        "_id": event_id,
        "operation": operation,
        "token": token,
        "capturedAt": captured_at,
    }
    if isinstance(key, Mapping) and "_id" in key:
        base["key"] = key["_id"]  # finds this document's entity again for its delete
    if operation not in DOCUMENT_OPERATIONS:
        return _failed(
            base,
            f"change operation {operation!r} is not a document change "
            f"(only {', '.join(DOCUMENT_OPERATIONS)} become events)",
        )
    time = _change_time(change, captured_at)
    if operation == "delete":
        before = change.get("fullDocumentBeforeChange")
        state = before if isinstance(before, Mapping) else key
        if not isinstance(state, Mapping):
            return _failed(base, "the delete has neither a document key nor a before-image")
        hint = ""
        if needs_identity(change, mapping):
            if known_id is None:
                return _failed(
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
        return _build(
            state,
            mapping,
            base,
            operation=operation,
            time=time,
            use_context=False,
            extra_attributes=_NO_ATTRIBUTES,
            id_hint=hint,
        )
    document = change.get("fullDocument")
    if not isinstance(document, Mapping):
        entity_id = _entity_id(key, mapping.id_field) if isinstance(key, Mapping) else None
        if isinstance(entity_id, str):
            base["entityId"] = entity_id
        return _failed(
            base,
            f"the {operation} has no fullDocument (open the stream with "
            f"full_document='updateLookup'; or the document was deleted "
            f"before the lookup, and its delete event follows)",
        )
    return _build(
        document,
        mapping,
        base,
        operation=operation,
        time=time,
        use_context=True,
        extra_attributes=_NO_ATTRIBUTES,
        id_hint="",
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
    return _build(
        document,
        mapping,
        base,
        operation=operation,
        time=time,
        use_context=operation != "delete",
        extra_attributes=extra_attributes,
        id_hint="",
    )


class _CaptureError(Exception):
    def __init__(
        self, reason: str, *, entity_id: str | None = None, event_type: str | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.entity_id = entity_id
        self.event_type = event_type


def _build(
    document: Mapping[str, Any],
    mapping: EventMapping,
    base: dict[str, Any],
    *,
    operation: str,
    time: datetime.datetime,
    use_context: bool,
    extra_attributes: Mapping[str, str],
    id_hint: str,
) -> OutboxDocument:
    try:
        outbox = _pending(
            document,
            mapping,
            base,
            operation=operation,
            time=time,
            use_context=use_context,
            extra_attributes=extra_attributes,
            id_hint=id_hint,
        )
    except _CaptureError as failure:
        if failure.entity_id is not None:
            base["entityId"] = failure.entity_id[:MAX_ORDERING_KEY_BYTES]
        if failure.event_type is not None:
            base["type"] = failure.event_type[:MAX_ATTRIBUTE_VALUE_BYTES]
        return _failed(base, failure.reason)
    return outbox


def _pending(
    document: Mapping[str, Any],
    mapping: EventMapping,
    base: dict[str, Any],
    *,
    operation: str,
    time: datetime.datetime,
    use_context: bool,
    extra_attributes: Mapping[str, str],
    id_hint: str,
) -> OutboxDocument:
    entity_id = _ordering_id(document, mapping, id_hint)
    context = _context(document, mapping, entity_id) if use_context else {}
    event_type = context.get("type")
    if event_type is None:
        event_type = f"{mapping.entity_type}.{_TYPE_SUFFIX[operation]}"
    elif not isinstance(event_type, str) or not event_type.strip():
        raise _CaptureError(
            f"'{mapping.event_context_field}.type' must be a non-empty string (the "
            f"CloudEvent type), not {short(event_type)}",
            entity_id=entity_id,
        )
    attributes = _attributes(
        document,
        mapping,
        context=context,
        event_id=base["_id"],
        event_type=event_type,
        entity_id=entity_id,
        time=time,
    )
    for key, value in extra_attributes.items():
        if key in attributes:
            raise ValueError(f"extra attribute {key!r} would replace a CloudEvent attribute")
        attributes[key] = value
    data = {
        k: v
        for k, v in document.items()
        if k != mapping.event_context_field and k not in mapping.exclude_fields
    }
    try:
        text = to_json(data)
        check_limits(
            Message(data=text.encode("utf-8"), attributes=attributes, ordering_key=entity_id)
        )
    except (EncodingError, Unpublishable) as error:
        raise _CaptureError(error.reason, entity_id=entity_id, event_type=event_type) from None
    pending: OutboxDocument = {
        "_id": base["_id"],
        "status": PENDING,
        "entityId": entity_id,
        "type": event_type,
        "operation": operation,
        "attributes": attributes,
        "data": text,
        "orderingKey": entity_id,
        "capturedAt": base["capturedAt"],
        "attempts": 0,
    }
    if "token" in base:
        pending["token"] = base["token"]
    if "key" in base:
        pending["key"] = base["key"]
    return pending


def entity_id_of(document: Mapping[str, Any], mapping: EventMapping) -> str:
    """The entity id of ``document`` as its events carry it (``ce-subject`` and the ordering
    key). Raises ``Unpublishable`` naming the id field when it is missing, empty, not
    encodable or too long for an ordering key."""
    try:
        return _ordering_id(document, mapping, "")
    except _CaptureError as error:
        raise Unpublishable(error.reason) from None


def version_of(document: Mapping[str, Any], mapping: EventMapping) -> str | None:
    """The entity version of ``document`` as ``ce-entityversion`` carries it; None without a
    version field or value. Raises ``Unpublishable`` naming the field if it cannot be encoded."""
    if mapping.version_field is None or document.get(mapping.version_field) is None:
        return None
    try:
        return _render(document[mapping.version_field])
    except EncodingError as error:
        raise Unpublishable(f"version field {mapping.version_field!r}: {error.reason}") from None


def _ordering_id(document: Mapping[str, Any], mapping: EventMapping, id_hint: str) -> str:
    """The entity id as text: ``ce-subject`` and the ordering key, within Pub/Sub's limit."""
    entity_id = _entity_id(document, mapping.id_field)
    if not isinstance(entity_id, str):
        raise _CaptureError(f"{entity_id.reason}{id_hint}")
    id_bytes = len(entity_id.encode("utf-8", "surrogatepass"))
    if id_bytes > MAX_ORDERING_KEY_BYTES:
        raise _CaptureError(
            f"id field {mapping.id_field!r} is {id_bytes} bytes as text; Pub/Sub "
            f"allows at most {MAX_ORDERING_KEY_BYTES} for the ordering key and "
            f"ce-subject",
            entity_id=entity_id,
        )
    return entity_id


def _context(
    document: Mapping[str, Any], mapping: EventMapping, entity_id: str
) -> Mapping[str, Any]:
    """The document's event context sub-document (empty without one)."""
    context = document.get(mapping.event_context_field)
    if context is not None and not isinstance(context, Mapping):
        raise _CaptureError(
            f"event context field {mapping.event_context_field!r} must be a "
            f"sub-document, not {short(context)}",
            entity_id=entity_id,
        )
    return context or {}


def _attributes(
    document: Mapping[str, Any],
    mapping: EventMapping,
    *,
    context: Mapping[str, Any],
    event_id: str,
    event_type: str,
    entity_id: str,
    time: datetime.datetime,
) -> dict[str, str]:
    """The CloudEvent attributes: the core ones, the entity version, the context's extensions."""
    attributes = {
        "ce-specversion": SPEC_VERSION,
        "ce-id": event_id,
        "ce-source": mapping.source,
        "ce-type": event_type,
        "ce-time": rfc3339(time),
        "ce-subject": entity_id,
        "content-type": CONTENT_TYPE,
    }
    if mapping.version_field is not None:
        version = document.get(mapping.version_field)
        if version is not None:
            try:
                attributes["ce-entityversion"] = _render(version)
            except EncodingError as error:
                raise _CaptureError(
                    f"version field {mapping.version_field!r}: {error.reason}",
                    entity_id=entity_id,
                    event_type=event_type,
                ) from None
    for key, attribute in CONTEXT_EXTENSIONS:
        value = context.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise _CaptureError(
                f"'{mapping.event_context_field}.{key}' must be a non-empty "
                f"string, not {short(value)}",
                entity_id=entity_id,
                event_type=event_type,
            )
        attributes[attribute] = value
    return attributes


def _failed(base: dict[str, Any], reason: str) -> OutboxDocument:
    failed: dict[str, Any] = {"_id": base["_id"], "status": FAILED, "reason": reason}
    failed.update((k, v) for k, v in base.items() if k != "_id")
    failed["attempts"] = 0
    return cast(OutboxDocument, failed)


def _entity_id(document: Mapping[str, Any], id_field: str) -> str | _CaptureError:
    """The entity id as a string, or a failure naming the field."""
    if id_field not in document or document[id_field] is None:
        return _CaptureError(f"the document has no id field {id_field!r}")
    try:
        rendered = _render(document[id_field])
    except EncodingError as error:
        return _CaptureError(f"id field {id_field!r}: {error.reason}")
    if not rendered:
        return _CaptureError(f"id field {id_field!r} is an empty string")
    return rendered


def _render(value: Any) -> str:
    """An id or version as text: strings as they are, ObjectIds and UUIDs as hex, else JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, ObjectId | uuid.UUID):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, Binary) and value.subtype == 4 and len(value) == 16:
        return str(value.as_uuid())
    return value_to_json(value)


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

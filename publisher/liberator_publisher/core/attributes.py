"""An entity document as a CloudEvent: its attributes, its data and the outbox document that
carries them, ``pending``, or ``failed`` with a readable reason.

The format is the Pub/Sub protocol binding for CloudEvents in binary mode (see event.py). Pure.
A document that cannot become a publishable message never raises out of ``outbox_document``:
what is known of it (entity id, type) goes into the failed outbox document with the reason.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any, cast

from liberator_publisher.core.encoding import EncodingError, to_json
from liberator_publisher.core.mapping import CaptureError, EventMapping, ordering_id, render
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

__all__ = ["failed_document", "outbox_document"]

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"
# Keys of the event-context sub-document -> CloudEvent extension attributes.
CONTEXT_EXTENSIONS = (
    ("correlationId", "ce-correlationid"),
    ("causationId", "ce-causationid"),
    ("traceparent", "ce-traceparent"),
)
_TYPE_SUFFIX = {"insert": "created", "update": "updated", "replace": "updated", "delete": "deleted"}


def outbox_document(
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
    """The outbox document of ``document``: ``base`` (``_id``, ``capturedAt``, maybe ``token``
    and ``key``) with the event, or failed. ``use_context``: read the event context sub-document
    (a delete's document key has none). ``id_hint`` ends the reason of a missing id. Raises
    ``ValueError`` only for an extra attribute that would replace a CloudEvent attribute."""
    try:
        entity_id = ordering_id(document, mapping, id_hint)
        context = _context(document, mapping, entity_id) if use_context else {}
        event_type = _event_type(context, mapping, operation, entity_id)
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
        text = _data(document, mapping, attributes, entity_id=entity_id, event_type=event_type)
    except CaptureError as failure:
        if failure.entity_id is not None:
            base["entityId"] = failure.entity_id[:MAX_ORDERING_KEY_BYTES]
        if failure.event_type is not None:
            base["type"] = failure.event_type[:MAX_ATTRIBUTE_VALUE_BYTES]
        return failed_document(base, failure.reason)
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


def failed_document(base: dict[str, Any], reason: str) -> OutboxDocument:
    """``base`` as a failed outbox document with ``reason``."""
    failed: dict[str, Any] = {"_id": base["_id"], "status": FAILED, "reason": reason}
    failed.update((k, v) for k, v in base.items() if k != "_id")
    failed["attempts"] = 0
    return cast(OutboxDocument, failed)


def _event_type(
    context: Mapping[str, Any], mapping: EventMapping, operation: str, entity_id: str
) -> str:
    """The context's ``type``, else the one derived from the entity type and the operation."""
    event_type = context.get("type")
    if event_type is None:
        return f"{mapping.entity_type}.{_TYPE_SUFFIX[operation]}"
    if not isinstance(event_type, str) or not event_type.strip():
        raise CaptureError(
            f"'{mapping.event_context_field}.type' must be a non-empty string (the "
            f"CloudEvent type), not {short(event_type)}",
            entity_id=entity_id,
        )
    return event_type


def _data(
    document: Mapping[str, Any],
    mapping: EventMapping,
    attributes: dict[str, str],
    *,
    entity_id: str,
    event_type: str,
) -> str:
    """The data as JSON (without the event context and the excluded fields), once the whole
    message is known to fit Pub/Sub's limits."""
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
        raise CaptureError(error.reason, entity_id=entity_id, event_type=event_type) from None
    return text


def _context(
    document: Mapping[str, Any], mapping: EventMapping, entity_id: str
) -> Mapping[str, Any]:
    """The document's event context sub-document (empty without one)."""
    context = document.get(mapping.event_context_field)
    if context is not None and not isinstance(context, Mapping):
        raise CaptureError(
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
                attributes["ce-entityversion"] = render(version)
            except EncodingError as error:
                raise CaptureError(
                    f"version field {mapping.version_field!r}: {error.reason}",
                    entity_id=entity_id,
                    event_type=event_type,
                ) from None
    for key, attribute in CONTEXT_EXTENSIONS:
        value = context.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise CaptureError(
                f"'{mapping.event_context_field}.{key}' must be a non-empty "
                f"string, not {short(value)}",
                entity_id=entity_id,
                event_type=event_type,
            )
        attributes[attribute] = value
    return attributes

"""Build the messages Liberator publishes, for feature teams' own tests of their handlers.

The message goes through the sidecar's own path (an outbox document for the entity, then the
Pub/Sub message the relay sends), so a handler tested on it sees exactly what production sends::

    from liberator_publisher.consumer.testing import cloud_event, pubsub_message

    event = cloud_event("quote", {"_id": "Q-1", "price": 10}, operation="updated")
    on_quote(event)                       # your handler
    data, attributes = pubsub_message("quote", {"_id": "Q-1"}, operation="deleted")

Pure: no server, no client.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import uuid4

from liberator_publisher.core.cloudevent import CloudEvent, parse_message
from liberator_publisher.core.event import outbox_document_for_entity
from liberator_publisher.core.mapping import EventMapping
from liberator_publisher.core.message import message_for
from liberator_publisher.core.outbox import PENDING

__all__ = ["cloud_event", "pubsub_message"]

_OPERATIONS = {"created": "insert", "updated": "update", "deleted": "delete"}


def pubsub_message(
    entity_type: str,
    document: Mapping[str, Any],
    *,
    operation: Literal["created", "updated", "deleted"] = "created",
    source: str | None = None,
    id_field: str = "_id",
    version_field: str | None = None,
    event_id: str | None = None,
    time: datetime | None = None,
) -> tuple[bytes, dict[str, str]]:
    """``(data, attributes)`` of the message Liberator would publish for ``document``.

    ``document`` is the entity as stored in MongoDB (with its ``_event`` context, if any); the
    type is ``<entity_type>.<operation>`` unless the context names one. Raises ``ValueError`` for
    a document Liberator could not publish, with Liberator's reason.
    """
    if operation not in _OPERATIONS:
        raise ValueError(f"operation must be one of {', '.join(_OPERATIONS)}, not {operation!r}")
    mapping = EventMapping(
        entity_type=entity_type,
        source=source or f"//tests/{entity_type}",
        id_field=id_field,
        version_field=version_field,
    )
    outbox = outbox_document_for_entity(
        document,
        mapping,
        event_id=event_id or uuid4().hex,
        operation=_OPERATIONS[operation],
        time=time or datetime.now(UTC),
    )
    if outbox.get("status") != PENDING:
        raise ValueError(f"Liberator would not publish this document: {outbox.get('reason')}")
    message = message_for(outbox)
    return message.data, dict(message.attributes)


def cloud_event(entity_type: str, document: Mapping[str, Any], **options: Any) -> CloudEvent:
    """The :class:`CloudEvent` a handler receives for ``document`` (options as for
    :func:`pubsub_message`)."""
    data, attributes = pubsub_message(entity_type, document, **options)
    return parse_message(data, attributes)

"""The event mapping: how documents of one entity collection become CloudEvents, and what it
reads from a document, the entity id and the version, as the events carry them.

Pure. An id or version is text: strings as they are, ObjectIds and UUIDs as hex, whole numbers
in decimal, anything else as relaxed extended JSON; so the same value always gives the same
``ce-subject``, ordering key and ``ce-entityversion``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bson import Binary, ObjectId

from liberator_publisher.core.encoding import EncodingError, value_to_json
from liberator_publisher.core.message import MAX_ORDERING_KEY_BYTES, Unpublishable

__all__ = [
    "CaptureError",
    "EventMapping",
    "entity_id_of",
    "entity_id_text",
    "ordering_id",
    "render",
    "version_of",
]


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


class CaptureError(Exception):
    """A document that cannot become an event, with what is known of it so far: the failed
    outbox document keeps the entity id and the type for the operator's eyes."""

    def __init__(
        self, reason: str, *, entity_id: str | None = None, event_type: str | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.entity_id = entity_id
        self.event_type = event_type


def entity_id_of(document: Mapping[str, Any], mapping: EventMapping) -> str:
    """The entity id of ``document`` as its events carry it (``ce-subject`` and the ordering
    key). Raises ``Unpublishable`` naming the id field when it is missing, empty, not
    encodable or too long for an ordering key."""
    try:
        return ordering_id(document, mapping, "")
    except CaptureError as error:
        raise Unpublishable(error.reason) from None


def version_of(document: Mapping[str, Any], mapping: EventMapping) -> str | None:
    """The entity version of ``document`` as ``ce-entityversion`` carries it; None without a
    version field or value. Raises ``Unpublishable`` naming the field if it cannot be encoded."""
    if mapping.version_field is None or document.get(mapping.version_field) is None:
        return None
    try:
        return render(document[mapping.version_field])
    except EncodingError as error:
        raise Unpublishable(f"version field {mapping.version_field!r}: {error.reason}") from None


def ordering_id(document: Mapping[str, Any], mapping: EventMapping, id_hint: str) -> str:
    """The entity id as text: ``ce-subject`` and the ordering key, within Pub/Sub's limit.
    Raises ``CaptureError``; ``id_hint`` ends the reason of an id that is not there."""
    entity_id = entity_id_text(document, mapping.id_field)
    if not isinstance(entity_id, str):
        raise CaptureError(f"{entity_id.reason}{id_hint}")
    id_bytes = len(entity_id.encode("utf-8", "surrogatepass"))
    if id_bytes > MAX_ORDERING_KEY_BYTES:
        raise CaptureError(
            f"id field {mapping.id_field!r} is {id_bytes} bytes as text; Pub/Sub "
            f"allows at most {MAX_ORDERING_KEY_BYTES} for the ordering key and "
            f"ce-subject",
            entity_id=entity_id,
        )
    return entity_id


def entity_id_text(document: Mapping[str, Any], id_field: str) -> str | CaptureError:
    """The entity id as a string, or a failure naming the field."""
    if id_field not in document or document[id_field] is None:
        return CaptureError(f"the document has no id field {id_field!r}")
    try:
        rendered = render(document[id_field])
    except EncodingError as error:
        return CaptureError(f"id field {id_field!r}: {error.reason}")
    if not rendered:
        return CaptureError(f"id field {id_field!r} is an empty string")
    return rendered


def render(value: Any) -> str:
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

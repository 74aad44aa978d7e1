"""The Pub/Sub message of an event, as the relay publishes it, and the limits Pub/Sub holds it to.

Pure. The emulator does not enforce Pub/Sub's limits, so they are checked here, before a message
could be refused in production.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from liberator_publisher.core.errors import ReasonedError
from liberator_publisher.core.outbox import FAILED

__all__ = [
    "MAX_ATTRIBUTES",
    "MAX_ATTRIBUTE_KEY_BYTES",
    "MAX_ATTRIBUTE_VALUE_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_ORDERING_KEY_BYTES",
    "Message",
    "Unpublishable",
    "check_limits",
    "message_for",
    "short",
]

# Pub/Sub's limits (https://cloud.google.com/pubsub/quotas#resource_limits). The emulator does
# not enforce them, so they are checked here.
MAX_MESSAGE_BYTES = 10_000_000
"""Data plus attribute keys and values plus ordering key, in bytes."""
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_KEY_BYTES = 256
MAX_ATTRIBUTE_VALUE_BYTES = 1024
MAX_ORDERING_KEY_BYTES = 1024


class Unpublishable(ReasonedError, ValueError):  # noqa: N818 (the shared interface names it)
    """A message Pub/Sub would refuse, or an outbox document that cannot become a message."""


@dataclass(frozen=True)
class Message:
    """One Pub/Sub message, as the relay publishes it."""

    data: bytes
    """The CloudEvent data: UTF-8 relaxed extended JSON."""
    attributes: dict[str, str]
    """The CloudEvent attributes (``ce-*``, ``content-type``)."""
    ordering_key: str
    """The entity id, so one entity's events arrive in order."""


def message_for(outbox_document: Mapping[str, Any]) -> Message:
    """The Pub/Sub message of a pending outbox document.

    Raises ``Unpublishable`` for a failed document, one whose fields are missing or of the wrong
    type (say, edited by hand), or a message over Pub/Sub's limits.
    """
    event_id = outbox_document.get("_id")
    if outbox_document.get("status") == FAILED:
        raise Unpublishable(
            f"event {event_id}: it failed at capture: "
            f"{outbox_document.get('reason', 'no reason recorded')}"
        )
    data = outbox_document.get("data")
    if not isinstance(data, str):
        raise Unpublishable(f"event {event_id}: field 'data' must be a string, not {short(data)}")
    attributes = outbox_document.get("attributes")
    if not isinstance(attributes, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()
    ):
        raise Unpublishable(
            f"event {event_id}: field 'attributes' must be a sub-document of "
            f"strings, not {short(attributes)}"
        )
    ordering_key = outbox_document.get("orderingKey")
    if not isinstance(ordering_key, str):
        raise Unpublishable(
            f"event {event_id}: field 'orderingKey' must be a string, not {short(ordering_key)}"
        )
    try:
        encoded = data.encode("utf-8")
    except UnicodeEncodeError:
        raise Unpublishable(f"event {event_id}: field 'data' is not valid Unicode") from None
    message = Message(data=encoded, attributes=dict(attributes), ordering_key=ordering_key)
    try:
        check_limits(message)
    except Unpublishable as error:
        raise Unpublishable(f"event {event_id}: {error.reason}") from None
    return message


def check_limits(message: Message) -> None:
    """Raise ``Unpublishable`` if Pub/Sub would refuse ``message``; the reason says which limit."""
    if len(message.attributes) > MAX_ATTRIBUTES:
        raise Unpublishable(
            f"the message has {len(message.attributes)} attributes; Pub/Sub "
            f"allows at most {MAX_ATTRIBUTES}"
        )
    size = len(message.data)
    for key, value in message.attributes.items():
        key_bytes = len(key.encode("utf-8", "surrogatepass"))
        value_bytes = len(value.encode("utf-8", "surrogatepass"))
        if not key:
            raise Unpublishable("an attribute key is empty; Pub/Sub requires a name")
        if key.startswith("goog"):
            raise Unpublishable(
                f"attribute {short(key)} starts with 'goog', which Pub/Sub reserves"
            )
        if key_bytes > MAX_ATTRIBUTE_KEY_BYTES:
            raise Unpublishable(
                f"attribute key {short(key)} is {key_bytes} bytes; Pub/Sub "
                f"allows at most {MAX_ATTRIBUTE_KEY_BYTES}"
            )
        if value_bytes > MAX_ATTRIBUTE_VALUE_BYTES:
            raise Unpublishable(
                f"attribute {key} is {value_bytes} bytes; Pub/Sub allows at "
                f"most {MAX_ATTRIBUTE_VALUE_BYTES}"
            )
        size += key_bytes + value_bytes
    key_bytes = len(message.ordering_key.encode("utf-8", "surrogatepass"))
    if key_bytes > MAX_ORDERING_KEY_BYTES:
        raise Unpublishable(
            f"the ordering key (the entity id) is {key_bytes} bytes; Pub/Sub "
            f"allows at most {MAX_ORDERING_KEY_BYTES}"
        )
    size += key_bytes
    if size > MAX_MESSAGE_BYTES:
        raise Unpublishable(
            f"the message is {size} bytes (data {len(message.data)}); Pub/Sub "
            f"allows at most {MAX_MESSAGE_BYTES}"
        )


def short(value: Any) -> str:
    """A value for an error message: its type and a bounded repr."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"

"""The CloudEvent as Liberator's readers see it: parsed from the Pub/Sub binding (binary mode:
``ce-*`` attributes, JSON data), and matched by type.

Pure. The subscriber library hands these to feature teams' handlers; the event store and replay
parse the same way. (Writing events is event.py's: the outbox document and its message.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bson import json_util
from bson.json_util import JSONMode, JSONOptions

from liberator_publisher.core.errors import ReasonedError
from liberator_publisher.core.times import parse_rfc3339

__all__ = [
    "CloudEvent",
    "Handler",
    "MalformedEventError",
    "check_pattern",
    "matches",
    "parse_message",
]

# Attributes that are CloudEvent context attributes rather than extensions.
_CORE = frozenset(
    {"ce-specversion", "ce-id", "ce-source", "ce-type", "ce-time", "ce-subject", "ce-dataschema"}
)
_REQUIRED = ("ce-specversion", "ce-id", "ce-source", "ce-type")
_JSON_OPTIONS = JSONOptions(json_mode=JSONMode.RELAXED, tz_aware=True, tzinfo=UTC)


class MalformedEventError(ReasonedError, ValueError):
    """A Pub/Sub message that is not a CloudEvent in the binary binding."""


@dataclass(frozen=True)
class CloudEvent:
    """One CloudEvent, as a handler receives it."""

    id: str
    """``ce-id``: unique per source; the key of idempotency."""
    type: str
    """``ce-type``, such as ``quote.created``."""
    source: str
    """``ce-source``, a URI reference naming the producer."""
    subject: str | None
    """``ce-subject``: for Liberator, the entity id."""
    time: datetime | None
    """``ce-time`` as an aware UTC datetime (None when absent)."""
    data: Any
    """The payload: for JSON content, the decoded MongoDB relaxed extended JSON (dates become
    datetimes, ``$oid`` an ObjectId); otherwise the raw bytes."""
    extensions: Mapping[str, str] = field(default_factory=dict)
    """Other ``ce-*`` attributes without the prefix: ``entityversion``, ``seed``, ``replay``,
    ``correlationid``, ``causationid``, ``traceparent`` ..."""
    datacontenttype: str | None = None
    """The ``content-type`` attribute."""
    specversion: str = "1.0"
    """``ce-specversion``."""


Handler = Callable[[CloudEvent], None]


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return True  # binary mode without content-type: Liberator always sends JSON
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or kind.endswith("+json")


def parse_message(data: bytes, attributes: Mapping[str, str]) -> CloudEvent:
    """The CloudEvent carried by a Pub/Sub message (binary mode); raises ``MalformedEventError``."""
    missing = [name for name in _REQUIRED if not attributes.get(name)]
    if missing:
        raise MalformedEventError(f"not a CloudEvent: missing attribute {', '.join(missing)}")
    if not attributes["ce-specversion"].startswith("1."):
        raise MalformedEventError(f"ce-specversion {attributes['ce-specversion']!r} is not 1.x")
    when: datetime | None = None
    if "ce-time" in attributes:
        try:
            when = parse_rfc3339(attributes["ce-time"], "ce-time")
        except ValueError as error:
            raise MalformedEventError(str(error)) from None
    content_type = attributes.get("content-type")
    payload: Any = data
    if _is_json(content_type):
        if data:
            try:
                payload = json_util.loads(data.decode("utf-8"), json_options=_JSON_OPTIONS)
            except (ValueError, UnicodeDecodeError, TypeError) as error:
                raise MalformedEventError(
                    f"data is not JSON although content-type is {content_type or 'unset'}: {error}"
                ) from None
        else:
            payload = None
    extensions = {
        name[3:]: value
        for name, value in attributes.items()
        if name.startswith("ce-") and name not in _CORE
    }
    return CloudEvent(
        id=attributes["ce-id"],
        type=attributes["ce-type"],
        source=attributes["ce-source"],
        subject=attributes.get("ce-subject"),
        time=when,
        data=payload,
        extensions=extensions,
        datacontenttype=content_type,
        specversion=attributes["ce-specversion"],
    )


def check_pattern(pattern: str) -> str:
    """A handler pattern: an exact type, ``prefix.*``, or ``*``; ``ValueError`` otherwise."""
    body = pattern[:-2] if pattern.endswith(".*") else pattern
    if pattern != "*" and (not body or "*" in body):
        raise ValueError(
            f"handler pattern {pattern!r}: use an exact type (quote.created), "
            "a prefix ending in .* (quote.*), or * for every type"
        )
    return pattern


def matches(pattern: str, event_type: str) -> bool:
    """Whether ``pattern`` (exact, ``prefix.*`` or ``*``) selects ``event_type``."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return event_type.startswith(pattern[:-1])
    return pattern == event_type

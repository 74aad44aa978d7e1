"""Live events as the relay publishes them, for the event store's and replay's tests."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from google.cloud import pubsub_v1

from liberator_publisher.core.event import EventMapping, outbox_document_for_entity
from liberator_publisher.core.message import message_for
from tests.support.waiting import eventually

__all__ = ["BASE", "MAPPING", "Message", "event_time", "live_message", "publish", "wait_count"]

MAPPING = EventMapping(
    entity_type="quote", source="//liberator/shop/quotes", version_field="version"
)
BASE = datetime(2026, 3, 1, tzinfo=UTC)

Message = tuple[bytes, dict[str, str], str]
"""(data, attributes, ordering key) of a Pub/Sub message."""


def event_time(entity: int, version: int) -> datetime:
    return BASE + timedelta(minutes=version, seconds=entity)


def live_message(entity: int, version: int, context: dict[str, Any] | None = None) -> Message:
    """Quote ``q-<entity>`` at ``version`` as a live event (the real mapping), with ``context``
    as its event context."""
    doc: dict[str, Any] = {
        "_id": f"q-{entity}",
        "version": version,
        "amount": entity * 10 + version,
    }
    if context:
        doc["_event"] = context
    outbox = outbox_document_for_entity(
        doc,
        MAPPING,
        event_id=f"live-{entity}-{version}",
        operation="insert" if version == 1 else "update",
        time=event_time(entity, version),
    )
    message = message_for(outbox)
    return message.data, message.attributes, message.ordering_key


def publish(publisher: pubsub_v1.PublisherClient, topic: str, messages: Sequence[Message]) -> None:
    """Publish all of ``messages`` to ``topic`` and wait until Pub/Sub has each."""
    futures = [
        publisher.publish(topic, data, ordering_key=key, **attrs) for data, attrs, key in messages
    ]
    for future in futures:
        future.result(timeout=60)


def wait_count(collection: Any, expected: int, deadline: float) -> None:
    """Until ``collection`` holds at least ``expected`` documents."""
    eventually(
        lambda: collection.count_documents({}) >= expected,
        what=f"{expected} documents in {collection.name}",
        deadline=deadline,
        every=0.2,
    )

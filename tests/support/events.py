"""Live events as the relay publishes them, for the event store's and replay's tests."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.cloud import pubsub_v1
from pymongo import MongoClient

from liberator_publisher.cli import main
from liberator_publisher.core.event import EventMapping, outbox_document_for_entity
from liberator_publisher.core.message import message_for
from liberator_stack import Server
from tests.support.waiting import eventually

__all__ = [
    "BASE",
    "MAPPING",
    "Message",
    "StoreWorld",
    "event_time",
    "exit_code",
    "live_message",
    "publish",
    "wait_count",
]

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


def exit_code(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> int:
    """``liberator ARGV`` run in-process with ``env`` set: its exit code, a SystemExit's too."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)


class StoreWorld:
    """The servers of an event store test: its database and Pub/Sub clients that publish in
    order. ``close`` drops the database."""

    def __init__(self, mongo_uri: str, pubsub: Server, unique: str, database: str) -> None:
        self.project = pubsub.exports["LIBERATOR_PUBSUB_PROJECT"]
        self.mongo_uri = mongo_uri
        self.database = database
        self.unique = unique
        self.mongo: MongoClient[dict[str, Any]] = MongoClient(mongo_uri, tz_aware=True)
        self.events = self.mongo[self.database]["liberator_events"]
        self.publisher = pubsub_v1.PublisherClient(
            publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True)
        )
        self.admin = pubsub_v1.SubscriberClient()

    def close(self) -> None:
        self.mongo.drop_database(self.database)
        self.mongo.close()

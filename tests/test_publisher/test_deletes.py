"""Deletes of entities keyed by a business id (``LIBERATOR_ID_FIELD=quoteId``), end to end.

A delete event carries only ``documentKey: {_id}``; the sidecar names the entity from what it saw
before (the outbox, or a seed's record). Real servers: the MongoDB stand-in (no pre-images, as on
MongoDB < 6 or a collection without ``changeStreamPreAndPostImages``), the Pub/Sub emulator and
Redis; ``liberator publish`` runs as a subprocess.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.collection import Collection

from liberator_publisher.core.settings import Settings
from liberator_publisher.seed.options import SeedOptions
from liberator_publisher.seed.seeder import run_seed
from liberator_publisher.state.identity import IDENTITY_SUFFIX
from tests.support.publisher import Collector, Publisher, Received, Topic, eventually

Doc = dict[str, Any]


@pytest.fixture()
def keyed(publisher: Publisher) -> Publisher:
    publisher.env["LIBERATOR_ID_FIELD"] = "quoteId"
    publisher.env["LIBERATOR_VERSION_FIELD"] = "v"
    return publisher


@pytest.fixture()
def client(keyed: Publisher) -> Iterator[MongoClient[Doc]]:
    c: MongoClient[Doc] = MongoClient(keyed.env["LIBERATOR_MONGO_URI"], tz_aware=True)
    yield c
    c.close()


def quotes(client: MongoClient[Doc], p: Publisher) -> Collection[Doc]:
    return client[p.database][p.collection]


def outbox(client: MongoClient[Doc], p: Publisher) -> Collection[Doc]:
    return client[p.database][p.outbox]


def of_type(collector: Collector, ce_type: str) -> list[Received]:
    return [m for m in collector.snapshot() if m.attributes["ce-type"] == ce_type]


def assert_deleted(message: Received, entity_id: str, key: Any) -> None:
    """The delete as a subscriber sees it: named by the business id, data = key + id."""
    assert message.attributes["ce-subject"] == entity_id
    assert message.ordering_key == entity_id
    assert message.attributes["ce-specversion"] == "1.0"
    assert message.attributes["content-type"] == "application/json"
    assert "ce-entityversion" not in message.attributes
    assert message.json() == {"_id": {"$oid": str(key)}, "quoteId": entity_id}


def wait_published(collector: Collector, ce_type: str, count: int) -> list[Received]:
    def arrived() -> list[Received] | None:
        got = of_type(collector, ce_type)
        return got if len(got) >= count else None

    return eventually(arrived, what=f"{count} {ce_type} event(s)")


def test_delete_after_a_sidecar_restart_names_the_entity(
    keyed: Publisher, collector: Collector, client: MongoClient[Doc]
) -> None:
    first = keyed.start()
    key = quotes(client, keyed).insert_one({"quoteId": "Q-1", "v": 1, "price": 10}).inserted_id
    quotes(client, keyed).insert_one({"quoteId": "Q-2", "v": 1, "price": 20})
    wait_published(collector, "quote.created", 2)
    first.stop()
    keyed.start()  # nothing in memory: the entity id comes from the outbox
    quotes(client, keyed).delete_one({"_id": key})
    [deleted] = wait_published(collector, "quote.deleted", 1)
    assert_deleted(deleted, "Q-1", key)
    # The ack reaches the collector before the relay marks the document.
    stored = eventually(
        lambda: outbox(client, keyed).find_one({"operation": "delete", "status": "published"}),
        what="the delete marked published",
    )
    assert (stored["entityId"], stored["key"]) == ("Q-1", key)
    # Nothing else changed: Q-2 stands, and no event failed.
    assert [d["quoteId"] for d in quotes(client, keyed).find()] == ["Q-2"]
    assert outbox(client, keyed).count_documents({"status": "failed"}) == 0
    assert len(collector.snapshot()) == 3


def test_delete_of_a_seeded_only_entity_names_it(
    keyed: Publisher, collector: Collector, client: MongoClient[Doc], unique: str
) -> None:
    # Written before any publisher existed: not captured, but seeded.
    old = (
        quotes(client, keyed)
        .insert_many([{"quoteId": f"Q-{n}", "v": 1} for n in range(3)])
        .inserted_ids
    )
    seed_topic = Topic(keyed.topic.project, f"seed-{unique}", f"seed-sub-{unique}").create()
    summary = run_seed(
        Settings.from_env(keyed.env), SeedOptions(topic=seed_topic.topic_id, seed_id=f"s-{unique}")
    )
    assert summary.seeded == 3
    identities = client[keyed.database][keyed.collection + IDENTITY_SUFFIX]
    assert {d["_id"]: d["entity"] for d in identities.find()} == {
        old[n]: f"Q-{n}" for n in range(3)
    }
    keyed.start()
    quotes(client, keyed).delete_one({"_id": old[1]})
    [deleted] = wait_published(collector, "quote.deleted", 1)
    assert_deleted(deleted, "Q-1", old[1])
    assert len(collector.snapshot()) == 1  # the seeded entities were not published live again
    assert quotes(client, keyed).count_documents({}) == 2


def test_delete_of_a_never_seen_document_stays_failed_and_the_stream_goes_on(
    keyed: Publisher, collector: Collector, client: MongoClient[Doc]
) -> None:
    unseen = quotes(client, keyed).insert_one({"quoteId": "Q-old", "v": 1}).inserted_id
    car = keyed.start()  # the insert came before the first start: neither captured nor seeded
    quotes(client, keyed).delete_one({"_id": unseen})
    key = quotes(client, keyed).insert_one({"quoteId": "Q-new", "v": 1}).inserted_id
    [created] = wait_published(collector, "quote.created", 1)
    assert created.attributes["ce-subject"] == "Q-new"
    failed = eventually(
        lambda: outbox(client, keyed).find_one({"status": "failed"}),
        what="the delete stored as failed",
    )
    assert failed["operation"] == "delete" and failed["key"] == unseen
    assert "never saw" in failed["reason"] and "EventSeed" in failed["reason"]
    assert "entityId" not in failed
    assert of_type(collector, "quote.deleted") == []
    assert car.metric("liberator_events_failed_total", 'stage="capture"') == 1.0
    assert quotes(client, keyed).find_one({"_id": key}) is not None


def test_delete_while_the_relay_cannot_publish_goes_out_once_it_can(
    keyed: Publisher, collector: Collector, client: MongoClient[Doc]
) -> None:
    healthy = keyed.start()
    key = quotes(client, keyed).insert_one({"quoteId": "Q-9", "v": 3}).inserted_id
    wait_published(collector, "quote.created", 1)
    healthy.stop()
    # The relay's Pub/Sub is unreachable; capture still writes the delete to the outbox.
    cut_off = keyed.sidecar(PUBSUB_EMULATOR_HOST="127.0.0.1:9").start().wait_ready()
    quotes(client, keyed).delete_one({"_id": key})
    pending = eventually(
        lambda: outbox(client, keyed).find_one({"operation": "delete"}),
        what="the delete captured into the outbox",
    )
    assert (pending["status"], pending["entityId"]) == ("pending", "Q-9")
    assert json.loads(pending["data"]) == {"_id": {"$oid": str(key)}, "quoteId": "Q-9"}
    assert of_type(collector, "quote.deleted") == []
    cut_off.stop()
    keyed.start()
    [deleted] = wait_published(collector, "quote.deleted", 1)
    assert_deleted(deleted, "Q-9", key)
    assert deleted.ce_id == pending["_id"]  # the same event, not a new one
    assert len(collector.snapshot()) == 2


def test_seed_records_no_identities_when_the_id_is_the_document_key(
    publisher: Publisher, unique: str
) -> None:
    with MongoClient(publisher.env["LIBERATOR_MONGO_URI"]) as c:
        c[publisher.database][publisher.collection].insert_many([{"n": n} for n in range(3)])
        seed_topic = Topic(publisher.topic.project, f"seed-{unique}", f"ss-{unique}").create()
        run_seed(
            Settings.from_env(publisher.env),
            SeedOptions(topic=seed_topic.topic_id, seed_id=f"s-{unique}"),
        )
        names = c[publisher.database].list_collection_names()
    assert publisher.collection + IDENTITY_SUFFIX not in names  # deletes name these by _id

"""End to end: ``liberator publish`` as a subprocess, changes made through pymongo, events read
from an ordered Pub/Sub subscription, all on the real local servers."""

from __future__ import annotations

import json
from typing import Any

import redis
from bson import ObjectId
from pymongo.database import Database

from liberator_publisher.core.contract import status_key
from tests.support.publisher import Collector, Publisher, Received, eventually


def by_entity(messages: list[Received]) -> dict[str, list[Received]]:
    grouped: dict[str, list[Received]] = {}
    for m in messages:
        grouped.setdefault(m.ordering_key, []).append(m)
    return grouped


def test_insert_update_delete_arrive_in_order_with_cloudevent_attributes(
    publisher: Publisher, collector: Collector, db: Database[dict[str, Any]]
) -> None:
    car = publisher.start()
    eventually(car.is_leader, what="the only sidecar leads")
    quotes = db[publisher.collection]
    ids = [ObjectId() for _ in range(3)]
    for n, oid in enumerate(ids):
        quotes.insert_one({"_id": oid, "amount": n, "_event": {"correlationId": f"corr-{n}"}})
    # Wait for each step so the update's looked-up document is the updated one (updateLookup
    # returns the document as it is at lookup time, by MongoDB's design).
    eventually(lambda: len(collector.snapshot()) >= 3, what="3 created events")
    for oid in ids:
        quotes.update_one({"_id": oid}, {"$set": {"amount": 100}})
    eventually(lambda: len(collector.snapshot()) >= 6, what="3 updated events")
    for oid in ids:
        quotes.delete_one({"_id": oid})
    eventually(lambda: len(collector.snapshot()) >= 9, what="3 deleted events")

    grouped = by_entity(collector.snapshot())
    assert sorted(grouped) == sorted(str(oid) for oid in ids)
    for n, oid in enumerate(ids):
        events = grouped[str(oid)]
        assert [e.attributes["ce-type"] for e in events] == [
            "quote.created",
            "quote.updated",
            "quote.deleted",
        ]
        created, updated, deleted = events
        for e in events:
            assert e.attributes["ce-specversion"] == "1.0"
            assert e.attributes["ce-subject"] == str(oid)
            assert e.attributes["ce-source"] == f"//liberator/{publisher.database}/quotes"
            assert e.attributes["content-type"] == "application/json"
            assert e.attributes["ce-time"].endswith("Z")
        assert len({e.ce_id for e in events}) == 3
        assert created.attributes["ce-correlationid"] == f"corr-{n}"
        assert created.json() == {"_id": {"$oid": str(oid)}, "amount": n}  # _event stripped
        assert updated.json() == {"_id": {"$oid": str(oid)}, "amount": 100}
        assert deleted.json() == {"_id": {"$oid": str(oid)}}  # the document key

    # The outbox records every event as published, with the message id. A message can reach
    # the collector before the relay marks its document, so wait for the marks.
    eventually(
        lambda: db[publisher.outbox].count_documents({"status": "published"}) == 9,
        what="9 outbox documents marked published",
    )
    outbox = list(db[publisher.outbox].find())
    assert len(outbox) == 9
    assert {d["status"] for d in outbox} == {"published"}
    assert all(d.get("messageId") and d.get("publishedAt") for d in outbox)
    assert {d["_id"] for d in outbox} == collector.ids()

    # Metrics and the status record reflect it.
    eventually(
        lambda: car.metric("liberator_events_published_total") == 9.0, what="published counter at 9"
    )
    assert car.metric("liberator_events_captured_total") == 9.0
    with redis.Redis.from_url(publisher.env["LIBERATOR_REDIS_URL"]) as r:
        record = eventually(lambda: r.get(status_key(publisher.name)), what="status record")
    status = json.loads(record)
    assert status["pod"] == "pod-0" and status["epoch"] >= 1 and status["parked"] == ""
    assert set(status) == {
        "pod",
        "epoch",
        "lastEventTime",
        "captureLagSeconds",
        "relayLagSeconds",
        "backlog",
        "parked",
        "captureSince",
        "updatedAt",
        "paused",
        "restart",
        "restartRejected",
        "stalled",
        "checkpoints",
        "resumePoint",
    }
    code, body = car.get("/healthz")
    assert code == 200 and body.startswith("ok (leader")
    assert car.stop() == 0  # SIGTERM is graceful


def test_many_entities_keep_their_order_under_load(
    publisher: Publisher, collector: Collector, db: Database[dict[str, Any]]
) -> None:
    # An event-log collection: each change is an insert of a new version of an entity, so every
    # event's data is exact (no updateLookup) and carries its sequence number.
    env = {"LIBERATOR_ID_FIELD": "entity", "LIBERATOR_BATCH_SIZE": "200"}
    publisher.start(**env)
    quotes = db[publisher.collection]
    total, entities = 1000, 20
    docs = [{"entity": f"e{i % entities}", "seq": i} for i in range(total)]
    for start in range(0, total, 100):
        quotes.insert_many(docs[start : start + 100])
    eventually(lambda: len(collector.ids()) >= total, what=f"{total} events", deadline=120)
    check_order(collector.snapshot(), total)


def check_order(messages: list[Received], total: int) -> None:
    """Every change arrived, duplicates share their ce-id, each entity's first deliveries are in
    sequence order."""
    seen: dict[int, str] = {}
    for m in messages:
        seq = m.json()["seq"]
        assert seen.setdefault(seq, m.ce_id) == m.ce_id, f"seq {seq} arrived with two ids"
    assert sorted(seen) == list(range(total))
    for key, events in by_entity(messages).items():
        firsts: list[int] = []
        known: set[int] = set()
        for e in events:
            seq = e.json()["seq"]
            if seq not in known:
                known.add(seq)
                firsts.append(seq)
        assert firsts == sorted(firsts), f"entity {key} out of order: {firsts}"

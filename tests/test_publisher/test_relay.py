"""The relay against the real MongoDB (emulator) and Pub/Sub emulator: pending outbox events go
out in order, are marked published, can be republished by flag, the sweep finds what the stream
missed, a missing topic holds events back in order, and bad outbox documents fail by name."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import Timestamp
from pymongo import MongoClient
from pymongo.database import Database

from liberator_publisher.core.event import outbox_document_for_entity
from liberator_publisher.core.mapping import EventMapping
from liberator_publisher.core.status import Progress
from liberator_publisher.sidecar.metrics import Metrics
from liberator_publisher.sidecar.outbox import ensure_indexes
from liberator_publisher.sidecar.relay import Relay, RelaySettings
from liberator_publisher.sidecar.sink import Sink, SinkSettings
from liberator_publisher.state.checkpoint import CHECKPOINT_COLLECTION, Checkpoints, Position
from liberator_stack import Server
from tests.support.publisher import OUTBOX, Collector, Topic, eventually

MAPPING = EventMapping(entity_type="quote", source="//test")


@pytest.fixture()
def db(mongo_uri: str, unique: str) -> Iterator[Database[dict[str, Any]]]:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri, tz_aware=True)
    ensure_indexes(client[f"rel_{unique}"][OUTBOX])
    yield client[f"rel_{unique}"]
    client.drop_database(f"rel_{unique}")
    client.close()


@pytest.fixture()
def topic(pubsub: Server, unique: str) -> Topic:
    return Topic(pubsub.exports["LIBERATOR_PUBSUB_PROJECT"], f"rel-{unique}", f"rel-sub-{unique}")


def event(entity: str, n: int, *, age_seconds: float = 0.0) -> dict[str, Any]:
    """A pending outbox event as capture writes it: with the change's oplog time, which orders
    events captured in the same millisecond (the sweep sorts by ``capturedAt, clusterTime``)."""
    now = datetime.now(UTC) - timedelta(seconds=age_seconds)
    document = outbox_document_for_entity(
        {"_id": entity, "n": n}, MAPPING, event_id=f"{entity}-{n}", operation="insert", time=now
    )
    document["clusterTime"] = Timestamp(int(now.timestamp()), n + 1)
    return document


class Running:
    """A Relay in a thread, stopped at the end."""

    def __init__(self, db: Database[dict[str, Any]], topic: Topic, **tuning: float) -> None:
        self.metrics = Metrics()
        self.checkpoints = Checkpoints(db[CHECKPOINT_COLLECTION], "test/rel")
        self.sink = Sink(SinkSettings(project=topic.project, topic=topic.topic_id))
        settings = RelaySettings(
            batch_size=50,
            max_await_ms=100,
            sweep_interval_seconds=tuning.get("sweep", 10.0),
            pending_age_seconds=tuning.get("age", 30.0),
            max_backoff_seconds=1.0,
        )
        self.relay = Relay(
            outbox=db[OUTBOX],
            checkpoints=self.checkpoints,
            sink=self.sink,
            metrics=self.metrics,
            progress=Progress(),
            epoch=1,
            pod="test",
            settings=settings,
        )
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.relay.run(lambda: not self.stop.is_set(), lambda: 5.0)
        except BaseException as error:
            self.error = error

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=20)
        self.sink.close()
        assert not self.thread.is_alive()
        assert self.error is None, self.error


@pytest.fixture()
def collector(topic: Topic) -> Iterator[Collector]:
    topic.create()
    c = Collector(topic)
    yield c
    c.close()


def test_pending_events_are_published_in_order_and_marked(
    db: Database[dict[str, Any]], topic: Topic, collector: Collector
) -> None:
    outbox = db[OUTBOX]
    outbox.insert_one(event("early", 0))  # before the relay ever ran: the first-start sweep
    running = Running(db, topic)
    outbox.insert_many([event(f"k{i % 5}", i) for i in range(200)])
    eventually(lambda: len(collector.ids()) >= 201, what="201 events")
    eventually(
        lambda: outbox.count_documents({"status": "published"}) == 201, what="all marked published"
    )
    for doc in outbox.find():
        assert doc["messageId"] and doc["publishedAt"] and doc["attempts"] == 1
    for key in {f"k{i}" for i in range(5)}:
        ns = [m.json()["n"] for m in collector.snapshot() if m.ordering_key == key]
        assert ns == sorted(ns) and len(ns) == 40
    eventually(lambda: not running.checkpoints.load("relay").empty, what="relay checkpoint")
    running.close()
    assert running.metrics.published._value.get() == 201


def test_setting_status_back_to_pending_republishes_with_the_same_id(
    db: Database[dict[str, Any]], topic: Topic, collector: Collector
) -> None:
    outbox = db[OUTBOX]
    running = Running(db, topic)
    outbox.insert_one(event("again", 1))
    eventually(
        lambda: outbox.find_one({"_id": "again-1", "status": "published"}), what="published once"
    )
    outbox.update_one({"_id": "again-1"}, {"$set": {"status": "pending"}})
    eventually(
        lambda: [m.ce_id for m in collector.snapshot()].count("again-1") >= 2,
        what="delivered a second time",
    )
    eventually(lambda: outbox.find_one({"_id": "again-1", "attempts": 2}), what="attempts 2")
    running.close()


def test_the_sweep_sends_a_pending_event_the_stream_missed(
    db: Database[dict[str, Any]], topic: Topic, collector: Collector
) -> None:
    outbox = db[OUTBOX]
    first = Running(db, topic)
    outbox.insert_one(event("seen", 1))
    eventually(lambda: not first.checkpoints.load("relay").empty, what="relay checkpoint")
    first.close()
    # While the relay is down, an event lands and its stream event is lost: move the relay's
    # checkpoint past it (as a crash or a lost stream would leave things).
    with outbox.watch(resume_after=first.checkpoints.load("relay").token) as stream:
        outbox.insert_one(event("missed", 1, age_seconds=120))
        outbox.insert_one({**event("marker", 1), "status": "published"})
        while True:
            change = stream.next()
            if change["documentKey"]["_id"] == "marker-1":
                break
        first.checkpoints.save("relay", 1, Position(token=stream.resume_token), "test")
    second = Running(db, topic, sweep=0.3, age=1.0)
    eventually(lambda: "missed-1" in collector.ids(), what="the sweep published it")
    eventually(
        lambda: outbox.find_one({"_id": "missed-1", "status": "published"}), what="marked published"
    )
    second.close()


def test_a_missing_topic_holds_events_back_and_sends_them_in_order_later(
    db: Database[dict[str, Any]], topic: Topic
) -> None:
    outbox = db[OUTBOX]
    running = Running(db, topic)  # the topic does not exist yet
    outbox.insert_many([event("held", i) for i in range(20)])
    eventually(
        lambda: running.metrics.publish_errors._value.get() >= 1, what="publish failures seen"
    )
    assert outbox.count_documents({"status": "pending"}) == 20  # waiting, not lost
    topic.create()
    collector = Collector(topic)
    try:
        eventually(lambda: len(collector.ids()) >= 20, what="20 events after the topic exists")
        ns = []
        for m in collector.snapshot():
            if m.json()["n"] not in ns:
                ns.append(m.json()["n"])
        assert ns == list(range(20))
    finally:
        collector.close()
    running.close()


@pytest.mark.parametrize(
    ("field", "value"), [("data", 42), ("attributes", {"ce-id": 7}), ("orderingKey", None)]
)
def test_a_damaged_outbox_document_fails_naming_the_field_and_the_next_goes_out(
    db: Database[dict[str, Any]], topic: Topic, collector: Collector, field: str, value: object
) -> None:
    outbox = db[OUTBOX]
    running = Running(db, topic)
    outbox.insert_one({**event("bad", 1), field: value})
    outbox.insert_one(event("good", 1))
    eventually(lambda: "good-1" in collector.ids(), what="the next event")
    bad = eventually(
        lambda: outbox.find_one({"_id": "bad-1", "status": "failed"}), what="the damaged one failed"
    )
    assert f"'{field}'" in bad["reason"]
    assert running.metrics.failed.labels(stage="relay")._value.get() == 1
    running.close()

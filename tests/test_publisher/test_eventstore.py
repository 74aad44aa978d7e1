"""``liberator eventstore`` against the real MongoDB emulator and Pub/Sub emulator."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bson import Binary
from google.cloud import pubsub_v1
from pymongo import MongoClient

from liberator_publisher.consumer.subscriber import MalformedEventError
from liberator_publisher.core.settings import Settings
from liberator_publisher.runtime.command import UsageError
from liberator_publisher.seed.ledger import LEDGER_SUFFIX
from liberator_publisher.seed.options import SeedOptions, seed_event_id
from liberator_publisher.seed.seeder import run_seed
from liberator_publisher.store.documents import (
    dead_letter_document,
    event_document,
    subscription_path,
)
from liberator_publisher.store.eventstore import EventStore, EventStoreSettings
from liberator_stack import Server, Stack
from liberator_stack.process import free_port
from tests.support import events
from tests.support.events import BASE, Message, live_message
from tests.support.publisher import Publisher, eventually

DEADLINE = 180.0
ROOT = Path(__file__).resolve().parents[2]


# -- pure parts ----------------------------------------------------------------------------------


def test_event_document_keeps_everything() -> None:
    data, attributes, _ = live_message(7, 2)
    received = datetime(2026, 3, 2, tzinfo=UTC)
    doc = event_document(
        data,
        attributes,
        message_id="m-1",
        publish_time=received,
        subscription="live",
        received_at=received,
    )
    assert doc["_id"] == "live-7-2"
    assert doc["type"] == "quote.updated"
    assert doc["subject"] == "q-7"
    assert doc["time"] == BASE + timedelta(minutes=2, seconds=7)
    assert doc["version"] == 2
    assert doc["data"] == {"_id": "q-7", "version": 2, "amount": 72}
    assert doc["raw"] == data.decode()
    assert doc["attributes"] == attributes
    assert (doc["subscription"], doc["messageId"], doc["publishTime"]) == ("live", "m-1", received)


def test_event_document_keeps_unstorable_data_raw() -> None:
    _, attributes, _ = live_message(1, 1)
    doc = event_document(
        b'{"$weird": 1}',
        attributes,
        message_id="m",
        publish_time=None,
        subscription="s",
        received_at=BASE,
    )
    assert doc["data"] is None
    assert doc["raw"] == '{"$weird": 1}'
    assert doc["time"] == BASE + timedelta(minutes=1, seconds=1)
    binary = event_document(
        b"\xff",
        {**attributes, "content-type": "application/octet-stream"},
        message_id="m",
        publish_time=None,
        subscription="s",
        received_at=BASE,
    )
    assert binary["raw"] == Binary(b"\xff")


def test_malformed_and_dead_letter_document() -> None:
    with pytest.raises(MalformedEventError, match="ce-id"):
        event_document(
            b"{}",
            {"ce-type": "x"},
            message_id="m",
            publish_time=None,
            subscription="s",
            received_at=BASE,
        )
    doc = dead_letter_document(
        b"x",
        {"a": "b"},
        reason="why",
        message_id="m",
        publish_time=None,
        subscription="s",
        received_at=BASE,
    )
    assert doc["_id"] == "s/m" and doc["reason"] == "why" and doc["data"] == Binary(b"x")


def test_subscription_path() -> None:
    assert subscription_path("live-events", "proj-1") == "projects/proj-1/subscriptions/live-events"
    assert subscription_path("projects/p/subscriptions/abc", None) == "projects/p/subscriptions/abc"
    for bad, project in (
        ("ab", "p"),
        ("projects/p/topics/abc", "p"),
        ("x y", "p"),
        ("live-events", None),
    ):
        with pytest.raises(UsageError, match="--subscription"):
            subscription_path(bad, project)


GOOD_ENV = {
    "LIBERATOR_MONGO_URI": "mongodb://127.0.0.1:1/",
    "LIBERATOR_DATABASE": "events",
    "LIBERATOR_PUBSUB_PROJECT": "liberator-local",
}


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        ([], {}, "--subscription"),
        (["--subscription", "a b"], {}, "--subscription"),
        (["--subscription", "live-events"], {"LIBERATOR_PUBSUB_PROJECT": ""}, "--subscription"),
        (["--subscription", "goog-events"], {}, "not with 'goog'"),
        (["--subscription", "projects/p/subscriptions/goog-x"], {}, "--subscription"),
        (["--subscription", "live-events", "--mongo-uri", "http://x"], {}, "--mongo-uri"),
        (["--subscription", "live-events"], {"LIBERATOR_MONGO_URI": "nope"}, "LIBERATOR_MONGO_URI"),
        (["--subscription", "live-events"], {"LIBERATOR_MONGO_URI": ""}, "--mongo-uri"),
        (["--subscription", "live-events", "--database", "a.b"], {}, "--database"),
        (["--subscription", "live-events"], {"LIBERATOR_DATABASE": "a/b"}, "LIBERATOR_DATABASE"),
        (["--subscription", "live-events"], {"LIBERATOR_DATABASE": ""}, "--database"),
        (["--subscription", "live-events", "--collection", "system.x"], {}, "--collection"),
        (["--subscription", "live-events", "--http-port", "http"], {}, "--http-port"),
        (
            ["--subscription", "live-events"],
            {"LIBERATOR_HTTP_PORT": "70000"},
            "LIBERATOR_HTTP_PORT",
        ),
        (["--subscription", "live-events", "--max-messages", "0"], {}, "--max-messages"),
        (["--subscription", "live-events", "--max-messages", "5000"], {}, "--max-messages"),
        (["--subscription", "live-events", "--workers", "0"], {}, "--workers"),
        (["--subscription", "live-events", "--workers", "many"], {}, "--workers"),
        (["--subscription", "live-events"], {"LIBERATOR_LOG_LEVEL": "LOUD"}, "LIBERATOR_LOG_LEVEL"),
        (
            ["--subscription", "live-events"],
            {"LIBERATOR_LOG_FORMAT": "xml"},
            "LIBERATOR_LOG_FORMAT",
        ),
    ],
)
def test_bad_input_exits_2_naming_it(
    args: list[str],
    env: dict[str, str],
    named: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert events.exit_code(["eventstore", *args], {**GOOD_ENV, **env}, monkeypatch) == 2
    assert named in capsys.readouterr().err


# -- against the servers -------------------------------------------------------------------------


class World(events.StoreWorld):
    def __init__(self, mongo_uri: str, pubsub: Server, unique: str) -> None:
        super().__init__(mongo_uri, pubsub, unique, f"events{unique}")
        self.dead = self.mongo[self.database]["liberator_events.deadletter"]
        self.topics: dict[str, str] = {}
        self.subscriptions: dict[str, str] = {}
        for name in ("live", "seed"):
            topic = self.publisher.create_topic(
                name=self.publisher.topic_path(self.project, f"{name}-{unique}")
            ).name
            self.topics[name] = topic
            self.subscriptions[name] = self.admin.create_subscription(
                request={
                    "name": self.admin.subscription_path(self.project, f"store-{name}-{unique}"),
                    "topic": topic,
                    "ack_deadline_seconds": 10,
                }
            ).name

    def publish(self, name: str, messages: list[Message]) -> None:
        events.publish(self.publisher, self.topics[name], messages)

    def settings(self, **extra: Any) -> EventStoreSettings:
        return EventStoreSettings(
            mongo_uri=self.mongo_uri,
            database=self.database,
            subscriptions=tuple(self.subscriptions.values()),
            pull_timeout_seconds=2,
            **extra,
        )

    def wait_count(self, collection: Any, expected: int) -> None:
        events.wait_count(collection, expected, DEADLINE)


@pytest.fixture()
def world(mongo_uri: str, pubsub: Server, unique: str) -> Iterator[World]:
    w = World(mongo_uri, pubsub, unique)
    yield w
    w.close()


class Running:
    """An in-process event store in a thread."""

    def __init__(self, settings: EventStoreSettings) -> None:
        self.store = EventStore(settings)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.store.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> EventStore:
        self.thread.start()
        return self.store

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        self.store.close()

    def count(self, outcome: str) -> float:
        value = self.store.registry.get_sample_value(
            "liberator_eventstore_messages_total", {"outcome": outcome}
        )
        return value or 0.0


def test_live_and_seed_events_are_stored_exactly_once(world: World, redis_url: str) -> None:
    live = [live_message(e, v) for e in range(300) for v in (1, 2, 3)]
    world.publish("live", live)
    world.publish("live", live[:100])  # a relay retry: same ce-ids again
    # The seed publishes a small collection to the seed topic.
    quotes = world.mongo[world.database]["quotes"]
    quotes.insert_many([{"_id": f"s-{i}", "version": 1} for i in range(200)])
    env = {
        "LIBERATOR_MONGO_URI": world.mongo_uri,
        "LIBERATOR_DATABASE": world.database,
        "LIBERATOR_COLLECTION": "quotes",
        "LIBERATOR_ENTITY_TYPE": "quote",
        "LIBERATOR_PUBSUB_PROJECT": world.project,
        "LIBERATOR_TOPIC": "unused",
        "LIBERATOR_REDIS_URL": redis_url,
        "LIBERATOR_VERSION_FIELD": "version",
    }
    summary = run_seed(
        Settings.from_env(env),
        SeedOptions(topic=world.topics["seed"].rsplit("/", 1)[1], seed_id="store-test"),
    )
    assert summary.seeded == 200
    port = free_port()
    running = Running(world.settings(http_port=port))
    with running:
        world.wait_count(world.events, 900 + 200)
        deadline = time.monotonic() + DEADLINE
        while running.count("stored") + running.count("duplicate") < 1000 + 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as reply:
            assert reply.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            assert b'liberator_eventstore_messages_total{outcome="stored"} 1100.0' in reply.read()
    assert running.count("stored") == 1100
    # The 100 republished ids; Pub/Sub may redeliver more (at least once): still stored once.
    assert running.count("duplicate") >= 100
    assert world.events.count_documents({}) == 1100
    assert world.events.count_documents({"attributes.ce-seed": "true"}) == 200
    assert world.events.count_documents({"subscription": f"store-seed-{world.unique}"}) == 200
    stored = world.events.find_one({"_id": "live-5-3"})
    assert stored is not None
    assert stored["subject"] == "q-5" and stored["version"] == 3
    assert stored["time"] == BASE + timedelta(minutes=3, seconds=5)
    assert stored["publishTime"] <= stored["receivedAt"]
    names = {index["name"] for index in world.events.list_indexes()}
    assert {"time", "type_time", "subject_time"} <= names


def test_malformed_messages_land_in_the_dead_letter_collection(world: World) -> None:
    good = live_message(1, 1)
    bad = [
        (b"{}", {"ce-type": "quote.created", "ce-source": "s", "ce-specversion": "1.0"}, ""),
        (b"{}", {**good[1], "ce-id": "bad-time", "ce-time": "yesterday"}, ""),
        (b"{not json", {**good[1], "ce-id": "bad-json"}, ""),
        (b"plain", {"hello": "world"}, ""),
    ]
    world.publish("live", [good, *bad])
    running = Running(world.settings(http_port=0))
    with running:
        world.wait_count(world.dead, 4)
        world.wait_count(world.events, 1)
        time.sleep(12)  # past the 10 s ack deadline: an unacked message would come back
    reasons = sorted(doc["reason"] for doc in world.dead.find())
    assert len(reasons) == 4
    assert any("ce-id" in r for r in reasons)
    assert any("ce-time" in r for r in reasons)
    assert any("not JSON" in r for r in reasons)
    plain = world.dead.find_one({"attributes.hello": "world"})
    assert plain is not None and plain["data"] == b"plain"  # nothing lost
    assert running.count("malformed") == 4
    assert running.count("duplicate") == 0  # acked: nothing was redelivered
    assert world.events.count_documents({}) == 1


def test_sigkill_mid_stream_loses_nothing(world: World) -> None:
    live = [live_message(e, v) for e in range(1000) for v in (1, 2, 3)]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "hack"),
        "LIBERATOR_MONGO_URI": world.mongo_uri,
        "LIBERATOR_DATABASE": world.database,
        "LIBERATOR_PUBSUB_PROJECT": world.project,
    }
    argv = [
        sys.executable,
        "-m",
        "liberator_publisher.cli",
        "eventstore",
        "--http-port",
        "0",
        "--max-messages",
        "100",
        *[a for s in world.subscriptions.values() for a in ("--subscription", s)],
    ]
    first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        publisher = threading.Thread(target=world.publish, args=("live", live))
        publisher.start()
        deadline = time.monotonic() + DEADLINE
        while world.events.count_documents({}) < 300:
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        publisher.join(timeout=DEADLINE)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert world.events.count_documents({}) < len(live)  # killed mid-stream
    second = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        world.wait_count(world.events, len(live))
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0
    ids = {doc["_id"] for doc in world.events.find({}, {"_id": 1})}
    assert ids == {attrs["ce-id"] for _, attrs, _ in live}


def test_storage_failure_nacks_and_the_events_come_back(
    world: World, stack: Stack, mongo_server: Server
) -> None:
    first = [live_message(e, 1) for e in range(100)]
    second = [live_message(e, 2) for e in range(100)]
    running = Running(world.settings(http_port=0))
    with running:
        world.publish("live", first)
        world.wait_count(world.events, 100)
        port = int(mongo_server.details["port"])
        stack.stop("mongo")  # MongoDB goes away: the store's writes fail
        try:
            world.publish("live", second)
            deadline = time.monotonic() + DEADLINE
            while running.count("failed") == 0:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        finally:
            stack.start("mongo", port)  # same port, same H2 file: the first 100 are kept
        world.wait_count(world.events, 200)
    ids = {doc["_id"] for doc in world.events.find({}, {"_id": 1})}
    assert ids == {attrs["ce-id"] for _, attrs, _ in first + second}
    assert running.count("failed") > 0


def test_the_sidecar_and_the_seed_are_stored_exactly_once(
    publisher: Publisher, world: World
) -> None:
    """The real ``liberator publish`` sidecar and ``liberator seed`` feed the event store."""
    store_live = world.admin.create_subscription(
        request={
            "name": world.admin.subscription_path(world.project, f"store-sidecar-{world.unique}"),
            "topic": publisher.topic.topic_path,
            "ack_deadline_seconds": 10,
        }
    ).name
    car = publisher.start()
    eventually(car.is_leader, what="the sidecar leads")
    client: MongoClient[dict[str, Any]] = MongoClient(world.mongo_uri, tz_aware=True)
    quotes = client[publisher.database][publisher.collection]
    quotes.insert_many([{"_id": f"q-{i}", "amount": i} for i in range(200)])
    outbox = client[publisher.database][publisher.outbox]
    eventually(lambda: outbox.count_documents({}) == 200, what="200 inserts captured")
    for i in range(0, 200, 2):
        quotes.update_one({"_id": f"q-{i}"}, {"$set": {"amount": -i}})
    # Wait until the sidecar is done: nothing pending and the outbox unchanged for a while. The
    # store is checked against what the sidecar published (the sidecar's own tests check that
    # each change is published).
    seen: list[int] = []

    def settled() -> bool:
        if outbox.count_documents({"status": {"$ne": "published"}}):
            return False
        seen.append(outbox.count_documents({}))
        return len(seen) >= 4 and len(set(seen[-4:])) == 1 and seen[-1] >= 200

    eventually(settled, what="the sidecar published everything", every=1.0)
    settings = Settings.from_env({**publisher.env, "LIBERATOR_TOPIC": "unused"})
    summary = run_seed(
        settings,
        SeedOptions(topic=world.topics["seed"].rsplit("/", 1)[1], seed_id=f"test/{world.unique}"),
    )
    assert (summary.seeded, summary.skipped, summary.failed) == (200, 0, 0)
    # Before scanning, the seed recorded where the sidecar's capture stood (no gap).
    ledger = client[publisher.database][publisher.collection + LEDGER_SUFFIX]
    checkpoint = ledger.find_one({"_id": f"test/{world.unique}"})
    assert checkpoint is not None and checkpoint["capture"]["publisherCheckpoint"]
    store = EventStoreSettings(
        mongo_uri=world.mongo_uri,
        database=world.database,
        subscriptions=(store_live, world.subscriptions["seed"]),
        http_port=0,
        pull_timeout_seconds=2,
    )
    live_ids = {doc["_id"] for doc in outbox.find({}, {"_id": 1})}
    running = Running(store)
    with running:
        world.wait_count(world.events, len(live_ids) + 200)
        time.sleep(3)  # anything more (a double store) would show now
    assert world.events.count_documents({}) == len(live_ids) + 200
    assert {
        d["_id"] for d in world.events.find({"attributes.ce-seed": {"$ne": "true"}})
    } == live_ids
    seeded = {d["_id"]: d["subject"] for d in world.events.find({"attributes.ce-seed": "true"})}
    assert seeded == {seed_event_id(settings.source, f"q-{i}", None): f"q-{i}" for i in range(200)}
    client.close()


def readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:  # not listening yet
        return 0, str(error)


def test_waits_for_a_subscription_created_later(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """Started before the EntityPublisher that declares its subscription: it waits, then stores."""
    late = world.admin.subscription_path(world.project, f"store-late-{world.unique}")
    port = free_port()
    settings = EventStoreSettings(
        mongo_uri=world.mongo_uri,
        database=world.database,
        subscriptions=(late,),
        http_port=port,
        pull_timeout_seconds=2,
        wait_max_seconds=1.0,
    )
    caplog.set_level("INFO", logger="liberator_publisher.store.eventstore")
    running = Running(settings)
    with running:
        _, body = eventually(
            lambda: (r := readyz(port))[0] == 503 and r,
            what="/readyz 503 while the subscription is missing",
        )
        assert late in body and "does not exist yet" in body

        def waits() -> list[logging.LogRecord]:
            return [
                r for r in caplog.records if late in r.getMessage() and "retrying" in r.getMessage()
            ]

        eventually(lambda: len(waits()) >= 3, what="a log line for each try")
        assert running.thread.is_alive()
        world.admin.create_subscription(
            request={"name": late, "topic": world.topics["live"], "ack_deadline_seconds": 10}
        )
        world.publish("live", [live_message(42, 1)])
        world.wait_count(world.events, 1)
        assert readyz(port) == (200, "ready\n")
    stored = world.events.find_one({"_id": "live-42-1"})
    assert stored is not None and stored["subscription"] == f"store-late-{world.unique}"
    assert any("consuming" in r.getMessage() for r in caplog.records)


def test_clients_passed_in_are_used_and_left_open(world: World) -> None:
    mongo: MongoClient[dict[str, Any]] = MongoClient(world.mongo_uri, tz_aware=True)
    subscriber = pubsub_v1.SubscriberClient()
    world.publish("live", [live_message(1, 1), live_message(2, 1)])
    settings = world.settings()
    store = EventStore(
        EventStoreSettings(**{**vars(settings), "subscriptions": (world.subscriptions["live"],)}),
        mongo=mongo,
        subscriber=subscriber,
    )
    deadline = time.monotonic() + 60
    while world.events.count_documents({}) < 2:
        assert time.monotonic() < deadline, "the store did not store both events"
        store.pull_once(world.subscriptions["live"])
    store.close()
    # The caller owns them: both still answer after the store closed.
    assert mongo[world.database]["liberator_events"].count_documents({}) == 2
    subscriber.get_subscription(request={"subscription": world.subscriptions["live"]})
    subscriber.close()
    mongo.close()

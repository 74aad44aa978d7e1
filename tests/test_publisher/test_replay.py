"""``liberator replay`` against the real MongoDB emulator, Pub/Sub emulator and Redis."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from liberator_publisher.cli import main
from liberator_publisher.consumer.subscriber import CloudEvent, Subscriber, SubscriberSettings
from liberator_publisher.runtime.command import UsageError
from liberator_publisher.store.eventstore import EventStore, EventStoreSettings
from liberator_publisher.store.replay import (
    REPLAY_ATTRIBUTE,
    Selection,
    message_of,
    selection_query,
)
from liberator_stack import Server
from tests.support import events
from tests.support.events import BASE, Message, event_time, live_message

DEADLINE = 180.0


# -- pure parts ----------------------------------------------------------------------------------


def test_selection_query() -> None:
    since, until = BASE, BASE + timedelta(hours=1)
    assert selection_query(Selection()) == {}
    assert selection_query(
        Selection(since=since, until=until, types=("quote.created",), subjects=("q-1", "q-2"))
    ) == {
        "time": {"$gte": since, "$lt": until},
        "type": {"$in": ["quote.created"]},
        "subject": {"$in": ["q-1", "q-2"]},
    }
    assert selection_query(Selection(types=("quote.*", "order.created"))) == {
        "$or": [{"type": {"$in": ["order.created"]}}, {"type": {"$regex": r"^quote\."}}]
    }
    assert selection_query(Selection(types=("*",))) == {}


def test_selection_rejects_bad_input() -> None:
    with pytest.raises(UsageError, match="--type"):
        Selection(types=("quote*",))
    with pytest.raises(UsageError, match="--since"):
        Selection(since=BASE, until=BASE)


def test_message_of_keeps_the_original_and_marks_the_replay() -> None:
    data, attributes, _ = live_message(3, 2)
    stored = {"raw": data.decode(), "attributes": attributes, "subject": "q-3"}
    body, attrs, key = message_of(stored)
    assert body == data
    assert attrs == {**attributes, REPLAY_ATTRIBUTE: "true"}
    assert key == "q-3"


GOOD_ENV = {
    "LIBERATOR_MONGO_URI": "mongodb://127.0.0.1:1/",
    "LIBERATOR_DATABASE": "events",
    "LIBERATOR_PUBSUB_PROJECT": "liberator-local",
}


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--since", "yesterday", "--dry-run"], {}, "--since"),
        (["--until", "2026-01-01", "--dry-run"], {}, "--until"),
        (
            ["--since", "2026-02-01T00:00:00Z", "--until", "2026-01-01T00:00:00Z", "--dry-run"],
            {},
            "--since",
        ),
        (["--type", "*.created", "--dry-run"], {}, "--type"),
        (["--subject", "", "--dry-run"], {}, "--subject"),
        ([], {}, "--topic"),
        (["--topic", "projects/p/topics/t"], {}, "--topic"),
        (["--topic", "goog-replay"], {}, "not with 'goog'"),  # Pub/Sub refuses it; so do we, first
        (["--topic", "replay-topic"], {"LIBERATOR_PUBSUB_PROJECT": ""}, "--project"),
        (
            ["--topic", "replay-topic", "--project", "Not A Project"],
            {},
            "--project: 'Not A Project'",
        ),
        (
            ["--topic", "replay-topic"],
            {"LIBERATOR_PUBSUB_PROJECT": "x"},
            "LIBERATOR_PUBSUB_PROJECT",
        ),
        (["--dry-run", "--mongo-uri", "http://x"], {}, "--mongo-uri"),
        (["--dry-run"], {"LIBERATOR_MONGO_URI": "nope"}, "LIBERATOR_MONGO_URI"),
        (["--dry-run"], {"LIBERATOR_DATABASE": ""}, "--database"),
        (["--dry-run"], {"LIBERATOR_DATABASE": "a.b"}, "LIBERATOR_DATABASE"),
        (["--dry-run", "--collection", "$x"], {}, "--collection"),
        (["--dry-run"], {"LIBERATOR_LOG_LEVEL": "LOUD"}, "LIBERATOR_LOG_LEVEL"),
        (["--dry-run"], {"LIBERATOR_LOG_FORMAT": "xml"}, "LIBERATOR_LOG_FORMAT"),
    ],
)
def test_bad_input_exits_2_naming_it(
    args: list[str],
    env: dict[str, str],
    named: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert events.exit_code(["replay", *args], {**GOOD_ENV, **env}, monkeypatch) == 2
    assert named in capsys.readouterr().err


# -- against the servers -------------------------------------------------------------------------


class World(events.StoreWorld):
    """A live topic, an event store on it, and helpers to make topics and pull them."""

    def __init__(self, mongo_uri: str, pubsub: Server, unique: str) -> None:
        super().__init__(mongo_uri, pubsub, unique, f"replay{unique}")
        self.live = self.topic("live")
        store_sub = self.subscription("store", self.live)
        self.store = EventStore(
            EventStoreSettings(
                mongo_uri=mongo_uri,
                database=self.database,
                subscriptions=(store_sub,),
                http_port=0,
                pull_timeout_seconds=2,
            )
        )
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.store.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def topic(self, name: str) -> str:
        return str(
            self.publisher.create_topic(
                name=self.publisher.topic_path(self.project, f"{name}-{self.unique}")
            ).name
        )

    def subscription(self, name: str, topic: str) -> str:
        return str(
            self.admin.create_subscription(
                request={
                    "name": self.admin.subscription_path(self.project, f"{name}-{self.unique}"),
                    "topic": topic,
                    "enable_message_ordering": True,
                    "ack_deadline_seconds": 60,
                }
            ).name
        )

    def publish(self, messages: list[Message]) -> None:
        events.publish(self.publisher, self.live, messages)

    def wait_stored(self, expected: int) -> None:
        events.wait_count(self.events, expected, DEADLINE)

    def drain(self, subscription: str, expected: int, quiet: float = 3.0) -> list[Any]:
        found: list[Any] = []
        deadline = time.monotonic() + DEADLINE
        last = time.monotonic()
        while time.monotonic() < deadline:
            response = self.admin.pull(
                request={"subscription": subscription, "max_messages": 1000}, timeout=5
            )
            items = response.received_messages
            if items:
                found += [item.message for item in items]
                self.admin.acknowledge(
                    request={"subscription": subscription, "ack_ids": [i.ack_id for i in items]}
                )
                last = time.monotonic()
            elif len(found) >= expected and time.monotonic() - last >= quiet:
                break
        return found

    def replay(self, *args: str) -> int:
        return main(
            [
                "replay",
                "--mongo-uri",
                self.mongo_uri,
                "--database",
                self.database,
                "--project",
                self.project,
                *args,
            ]
        )

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        self.store.close()
        super().close()


@pytest.fixture()
def world(mongo_uri: str, pubsub: Server, unique: str) -> Iterator[World]:
    w = World(mongo_uri, pubsub, unique)
    yield w
    w.close()


def test_window_republishes_exactly_the_stored_events_in_it(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    entities, versions = range(60), range(1, 5)
    purchased = {"type": "quote.purchased", "correlationId": "c-1"}
    messages = {
        (e, v): live_message(e, v, purchased if v == 4 else None)
        for e in entities
        for v in versions
    }
    world.publish(list(messages.values()))
    world.wait_stored(len(messages))
    since, until = BASE + timedelta(minutes=2), BASE + timedelta(minutes=4, seconds=30)
    subjects = {f"q-{e}" for e in range(0, 60, 3)}
    expected = {
        attrs["ce-id"]
        for (e, v), (_, attrs, _) in messages.items()
        if since <= event_time(e, v) < until
        and attrs["ce-type"].startswith("quote.")
        and attrs["ce-type"] != "quote.created"
        and f"q-{e}" in subjects
    }
    assert 0 < len(expected) < len(messages)
    window = [
        "--since",
        "2026-03-01T00:02:00Z",
        "--until",
        "2026-03-01T00:04:30Z",
        "--type",
        "quote.updated",
        "--type",
        "quote.purchased",
        *[a for s in sorted(subjects) for a in ("--subject", s)],
    ]
    assert world.replay(*window, "--dry-run") == 0
    assert capsys.readouterr().out.strip() == f"events={len(expected)}"
    # A prefix selects by type on the server too ($regex); an unknown prefix selects nothing.
    assert world.replay("--type", "quote.*", "--dry-run") == 0
    assert capsys.readouterr().out.strip() == f"events={len(messages)}"
    assert world.replay("--type", "order.*", "--type", "quote.purchased", "--dry-run") == 0
    assert capsys.readouterr().out.strip() == f"events={len(entities)}"
    target = world.topic("hydrate")
    sub = world.subscription("hydrate", target)
    assert world.replay(*window, "--topic", target.rsplit("/", 1)[1]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"replayed={len(expected)} failed=0"
    received = world.drain(sub, len(expected))
    assert sorted(m.attributes["ce-id"] for m in received) == sorted(expected)
    per_subject: dict[str, list[str]] = defaultdict(list)
    for message in received:
        attrs = dict(message.attributes)
        assert attrs.pop(REPLAY_ATTRIBUTE) == "true"
        original = next(m for m in messages.values() if m[1]["ce-id"] == attrs["ce-id"])
        assert attrs == original[1]  # original attributes, original ce-id
        assert message.data == original[0]
        assert message.ordering_key == attrs["ce-subject"]
        per_subject[attrs["ce-subject"]].append(attrs["ce-time"])
    for subject, times in per_subject.items():
        assert times == sorted(times), subject


def test_late_subscriber_replays_then_follows_live(world: World, redis_url: str) -> None:
    entities = range(50)
    world.publish([live_message(e, v) for e in entities for v in (1, 2, 3)])
    world.wait_stored(150)
    # The new consumer subscribes to live traffic first (it buffers), then hydrates.
    live_sub = world.subscription("late-live", world.live)
    world.publish([live_message(e, 4) for e in range(25)])  # live while it hydrates
    world.wait_stored(175)
    hydrate_topic = world.topic("late-hydrate")
    hydrate_sub = world.subscription("late-hydrate", hydrate_topic)
    assert world.replay("--topic", hydrate_topic.rsplit("/", 1)[1]) == 0

    state: dict[str, int] = {}
    applied: dict[str, list[int]] = defaultdict(list)

    def apply(event: CloudEvent) -> None:
        version = int(event.extensions["entityversion"])
        assert event.subject is not None
        if version > state.get(event.subject, 0):  # the guard every state consumer keeps
            state[event.subject] = version
            applied[event.subject].append(version)

    def consumer(subscription: str) -> Subscriber:
        sub = Subscriber(
            SubscriberSettings(
                subscription=subscription,
                redis_url=redis_url,
                consumer=f"late-{world.unique}",
                pull_timeout_seconds=2,
                max_messages=100,
            )
        )
        sub.add("quote.*", apply)
        return sub

    def drive(sub: Subscriber, handled: int) -> None:
        deadline = time.monotonic() + DEADLINE
        while sub.counts["handled"] + sub.counts["duplicate"] < handled:
            assert time.monotonic() < deadline, dict(sub.counts)
            sub.run_once()

    hydrate = consumer(hydrate_sub)
    drive(hydrate, 175)
    assert hydrate.counts == {"handled": 175}
    live = consumer(live_sub)
    drive(live, 25)  # the live copies of the replayed version 4: already handled
    assert live.counts == {"duplicate": 25}
    world.publish([live_message(e, 5) for e in range(25, 50)])
    drive(live, 50)
    assert live.counts == {"duplicate": 25, "handled": 25}
    assert state == {f"q-{e}": 4 if e < 25 else 5 for e in entities}
    for subject, versions in applied.items():
        assert versions == sorted(versions), subject
    hydrate.close()
    live.close()

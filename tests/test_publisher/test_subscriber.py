"""The subscriber library against the real Pub/Sub emulator and Redis.

The emulator supports dead-letter policies (checked: it counts ``delivery_attempt`` and forwards to
the dead-letter topic with ``CloudPubSubDeadLetterSource*`` attributes), so the policy path is
tested for real; the library's own path (no policy, ``dead_letter_topic`` set) is tested too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from google.cloud import pubsub_v1

from liberator_publisher.consumer.subscriber import (
    REASON_ATTRIBUTE,
    CloudEvent,
    MalformedEventError,
    Subscriber,
    SubscriberSettings,
    backoff_seconds,
    check_pattern,
    matches,
    parse_message,
    parse_time,
)
from liberator_stack import Server

DEADLINE = 90.0


def attrs(event_id: str, event_type: str, subject: str = "q-1", **extra: str) -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-type": event_type,
        "ce-source": "//liberator/test/quotes",
        "ce-subject": subject,
        "ce-time": "2026-01-02T03:04:05.678Z",
        "content-type": "application/json",
        **extra,
    }


# -- pure parts ----------------------------------------------------------------------------------


def test_parse_message_reads_the_binary_binding() -> None:
    data = b'{"quoteId": "q-1", "at": {"$date": "2026-01-02T03:04:05Z"}, "n": 3}'
    event = parse_message(
        data,
        attrs(
            "e-1",
            "quote.created",
            **{"ce-entityversion": "7", "ce-seed": "true", "googclient_x": "y"},
        ),
    )
    assert event.id == "e-1"
    assert event.type == "quote.created"
    assert event.subject == "q-1"
    assert event.time == datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert event.data["at"] == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert event.data["n"] == 3
    assert event.extensions == {"entityversion": "7", "seed": "true"}


@pytest.mark.parametrize("missing", ["ce-specversion", "ce-id", "ce-type", "ce-source"])
def test_parse_message_names_a_missing_attribute(missing: str) -> None:
    attributes = attrs("e-1", "quote.created")
    del attributes[missing]
    with pytest.raises(MalformedEventError, match=missing):
        parse_message(b"{}", attributes)


@pytest.mark.parametrize(
    ("change", "data", "reason"),
    [
        ({"ce-time": "yesterday"}, b"{}", "ce-time"),
        ({"ce-time": "2026-01-02"}, b"{}", "ce-time"),
        ({"ce-specversion": "0.3"}, b"{}", "ce-specversion"),
        ({}, b"not json", "not JSON"),
        ({}, b"\xff\xfe", "not JSON"),
    ],
)
def test_parse_message_rejects_malformed(change: dict[str, str], data: bytes, reason: str) -> None:
    with pytest.raises(MalformedEventError, match=reason):
        parse_message(data, {**attrs("e-1", "quote.created"), **change})


def test_non_json_content_is_passed_as_bytes() -> None:
    event = parse_message(b"\x00\x01", attrs("e-1", "x.y", **{"content-type": "image/png"}))
    assert event.data == b"\x00\x01"


def test_parse_time() -> None:
    assert parse_time("2026-01-02T03:04:05+02:00") == datetime(2026, 1, 2, 1, 4, 5, tzinfo=UTC)
    for bad in ("2026-01-02", "2026-01-02T03:04:05", "nonsense-T-Z"):
        with pytest.raises(ValueError, match="since"):
            parse_time(bad, "since")


def test_patterns() -> None:
    assert matches("quote.*", "quote.created")
    assert matches("quote.*", "quote.line.added")
    assert not matches("quote.*", "quotes.created")
    assert not matches("quote.*", "quote")
    assert matches("*", "anything")
    assert matches("quote.created", "quote.created")
    assert not matches("quote.created", "quote.created.v2")
    for bad in ("", "quote*", "*.created", "quote.*.x", ".*"):
        with pytest.raises(ValueError, match="handler pattern"):
            check_pattern(bad)


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_seconds(n, 1, 10) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert backoff_seconds(30, 5, 10_000) == 600  # Pub/Sub's ceiling


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"subscription": "billing"}, "subscription"),
        ({"subscription": "projects/p/topics/t"}, "subscription"),
        ({"redis_url": "localhost:6379"}, "redis_url"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"dedupe_ttl_seconds": 0}, "dedupe_ttl_seconds"),
        ({"min_backoff_seconds": 5, "max_backoff_seconds": 1}, "max_backoff_seconds"),
        ({"max_backoff_seconds": 601}, "max_backoff_seconds"),
    ],
)
def test_settings_reject_bad_input(change: dict[str, Any], field: str) -> None:
    good: dict[str, Any] = {
        "subscription": "projects/p/subscriptions/s",
        "redis_url": "redis://127.0.0.1:1/0",
    }
    with pytest.raises(ValueError, match=field):
        SubscriberSettings(**{**good, **change})


# -- against the emulator and Redis --------------------------------------------------------------


class Topics:
    """A topic with a subscription (and optionally a dead-letter topic) on the emulator."""

    def __init__(
        self,
        pubsub: Server,
        name: str,
        *,
        dead_letter_attempts: int = 0,
        own_dead_letter: bool = False,
    ) -> None:
        project = pubsub.exports["LIBERATOR_PUBSUB_PROJECT"]
        self.publisher = pubsub_v1.PublisherClient()
        self.admin = pubsub_v1.SubscriberClient()
        self.topic = self.publisher.create_topic(
            name=self.publisher.topic_path(project, f"t-{name}")
        ).name
        self.dead_topic = self.publisher.create_topic(
            name=self.publisher.topic_path(project, f"dl-{name}")
        ).name
        self.dead_sub = self.admin.create_subscription(
            request={
                "name": self.admin.subscription_path(project, f"dl-{name}"),
                "topic": self.dead_topic,
            }
        ).name
        request: dict[str, Any] = {
            "name": self.admin.subscription_path(project, f"s-{name}"),
            "topic": self.topic,
            "ack_deadline_seconds": 10,
        }
        if dead_letter_attempts:
            request["dead_letter_policy"] = {
                "dead_letter_topic": self.dead_topic,
                "max_delivery_attempts": dead_letter_attempts,
            }
        self.subscription = self.admin.create_subscription(request=request).name
        self.own_dead_letter = own_dead_letter

    def publish(self, data: bytes, attributes: dict[str, str]) -> None:
        self.publisher.publish(self.topic, data, **attributes).result(timeout=60)

    def subscriber(self, redis_url: str, **settings: Any) -> Subscriber:
        extra = {"dead_letter_topic": self.dead_topic} if self.own_dead_letter else {}
        return Subscriber(
            SubscriberSettings(
                subscription=self.subscription,
                redis_url=redis_url,
                pull_timeout_seconds=2,
                min_backoff_seconds=0.5,
                max_backoff_seconds=1,
                **extra,
                **settings,
            )
        )

    def dead_letters(self, expected: int) -> list[Any]:
        found: list[Any] = []
        deadline = time.monotonic() + DEADLINE
        while len(found) < expected and time.monotonic() < deadline:
            response = self.admin.pull(
                request={"subscription": self.dead_sub, "max_messages": 10}, timeout=5
            )
            for item in response.received_messages:
                found.append(item.message)
                self.admin.acknowledge(
                    request={"subscription": self.dead_sub, "ack_ids": [item.ack_id]}
                )
        return found


def drive(sub: Subscriber, done: Callable[[], bool], settle: float = 0.0) -> None:
    """Run the loop until ``done()``, then ``settle`` more seconds (to see redeliveries)."""
    deadline = time.monotonic() + DEADLINE
    while not done():
        assert time.monotonic() < deadline, f"gave up waiting; counts {dict(sub.counts)}"
        sub.run_once()
    end = time.monotonic() + settle
    while time.monotonic() < end:
        sub.run_once()


def test_dispatch_by_type_and_unknown_types_are_acked(
    pubsub: Server, redis_url: str, unique: str
) -> None:
    topics = Topics(pubsub, unique)
    sub = topics.subscriber(redis_url)
    seen: dict[str, list[str]] = {"purchased": [], "quote": [], "order": []}
    sub.add("quote.purchased", lambda e: seen["purchased"].append(e.id))

    @sub.on("quote.*")
    def on_quote(event: CloudEvent) -> None:
        assert event.data["quoteId"] == event.subject
        seen["quote"].append(event.id)

    sub.add("order.created", lambda e: seen["order"].append(e.id))
    body = {"q-1": b'{"quoteId": "q-1"}', "q-2": b'{"quoteId": "q-2"}'}
    topics.publish(body["q-1"], attrs("a", "quote.created", "q-1"))
    topics.publish(body["q-1"], attrs("b", "quote.purchased", "q-1"))
    topics.publish(body["q-2"], attrs("c", "quote.line.added", "q-2"))
    topics.publish(b"{}", attrs("d", "invoice.sent", "i-1"))
    topics.publish(b"{}", attrs("e", "order.created", "o-1"))
    # The settle time exceeds the 10 s ack deadline: anything not acked would come back.
    drive(sub, lambda: sum(sub.counts.values()) >= 5, settle=13)
    assert sorted(seen["quote"]) == ["a", "c"]
    assert seen["purchased"] == ["b"]
    assert seen["order"] == ["e"]
    assert sub.counts == {"handled": 4, "unknown": 1}
    sub.close()


def test_duplicate_delivery_calls_the_handler_once(
    pubsub: Server, redis_url: str, unique: str
) -> None:
    topics = Topics(pubsub, unique)
    calls: list[str] = []
    first = topics.subscriber(redis_url)
    first.add("quote.*", lambda e: calls.append(e.id))
    for _ in range(3):  # the same event published three times (e.g. a relay retry)
        topics.publish(b'{"quoteId": "q-1"}', attrs("same-id", "quote.updated"))
    topics.publish(b'{"quoteId": "q-1"}', attrs("other-id", "quote.updated"))
    drive(first, lambda: sum(first.counts.values()) >= 4)
    assert sorted(calls) == ["other-id", "same-id"]
    assert first.counts == {"handled": 2, "duplicate": 2}
    # A second worker of the same subscription shares the Redis keys.
    second = topics.subscriber(redis_url)
    second.add("quote.*", lambda e: calls.append(e.id))
    topics.publish(b'{"quoteId": "q-1"}', attrs("same-id", "quote.updated"))
    drive(second, lambda: sum(second.counts.values()) >= 1)
    assert second.counts == {"duplicate": 1}
    assert sorted(calls) == ["other-id", "same-id"]
    first.close()
    second.close()


def test_failing_handler_is_retried_then_dead_lettered_by_the_policy(
    pubsub: Server, redis_url: str, unique: str
) -> None:
    topics = Topics(pubsub, unique, dead_letter_attempts=5)
    sub = topics.subscriber(redis_url)
    calls: dict[str, int] = {"poison": 0, "flaky": 0}

    def handle(event: CloudEvent) -> None:
        calls[event.id] += 1
        if event.id == "poison" or calls[event.id] < 3:
            raise RuntimeError(f"cannot handle {event.id}")

    sub.add("quote.*", handle)
    topics.publish(b'{"quoteId": "q-1"}', attrs("poison", "quote.created", "q-1"))
    topics.publish(b'{"quoteId": "q-2"}', attrs("flaky", "quote.created", "q-2"))
    drive(sub, lambda: sub.counts["dead_lettered"] >= 1 and sub.counts["handled"] >= 1, settle=3)
    assert calls == {"poison": 5, "flaky": 3}
    dead = topics.dead_letters(1)
    assert [m.attributes["ce-id"] for m in dead] == ["poison"]
    assert dead[0].attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"
    assert sub.counts == {"failed": 4 + 2, "dead_lettered": 1, "handled": 1}
    sub.close()


def test_library_dead_letters_without_a_policy(pubsub: Server, redis_url: str, unique: str) -> None:
    topics = Topics(pubsub, unique, own_dead_letter=True)
    sub = topics.subscriber(redis_url, max_attempts=3)
    calls: list[str] = []

    def handle(event: CloudEvent) -> None:
        calls.append(event.id)
        raise ValueError("boom")

    sub.add("quote.created", handle)
    topics.publish(b'{"quoteId": "q-1"}', attrs("poison", "quote.created"))
    topics.publish(b"not json", attrs("garbled", "quote.created"))
    drive(sub, lambda: sub.counts["dead_lettered"] >= 1 and sub.counts["malformed"] >= 1)
    assert calls == ["poison"] * 3
    dead = {m.attributes["ce-id"]: m for m in topics.dead_letters(2)}
    assert set(dead) == {"poison", "garbled"}
    assert "boom" in dead["poison"].attributes[REASON_ATTRIBUTE]
    assert "not JSON" in dead["garbled"].attributes[REASON_ATTRIBUTE]
    assert dead["garbled"].data == b"not json"  # nothing lost: the original bytes
    sub.close()


def test_malformed_message_goes_to_the_policy_topic(
    pubsub: Server, redis_url: str, unique: str
) -> None:
    topics = Topics(pubsub, unique, dead_letter_attempts=5)
    sub = topics.subscriber(redis_url)
    sub.add("*", lambda e: None)
    topics.publish(json.dumps({"x": 1}).encode(), {"kind": "not-a-cloudevent"})
    drive(sub, lambda: sub.counts["malformed"] >= 1)
    dead = topics.dead_letters(1)
    assert dead[0].attributes["kind"] == "not-a-cloudevent"
    assert "ce-id" in dead[0].attributes[REASON_ATTRIBUTE]
    sub.close()


def test_the_example_runs(pubsub: Server, redis_url: str) -> None:
    """examples/subscriber_example.py --demo, as a newcomer runs it on the local stack."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, **pubsub.exports, "LIBERATOR_REDIS_URL": redis_url}
    done = subprocess.run(
        [sys.executable, str(root / "examples" / "subscriber_example.py"), "--demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "bill q-1: 10.5 (correlation order-7)" in done.stdout
    assert "outcomes: {'duplicate': 1, 'handled': 2, 'unknown': 1}" in done.stdout


def test_clients_passed_in_are_used_and_left_open(
    pubsub: Server, redis_url: str, unique: str
) -> None:
    topics = Topics(pubsub, unique)
    client = pubsub_v1.SubscriberClient()
    store = redis.Redis.from_url(redis_url, decode_responses=True)
    sub = Subscriber(
        SubscriberSettings(
            subscription=topics.subscription, redis_url=redis_url, pull_timeout_seconds=2
        ),
        subscriber=client,
        redis_client=store,
    )
    seen: list[str] = []
    sub.add("quote.created", lambda e: seen.append(e.id))
    topics.publish(b'{"quoteId": "q-1"}', attrs("injected-1", "quote.created", "q-1"))
    drive(sub, lambda: sub.counts["handled"] >= 1)
    assert seen == ["injected-1"]
    sub.close()
    # The caller owns them: both still answer after the subscriber closed.
    assert store.ping()
    assert any(key.endswith("injected-1") for key in store.scan_iter(match="*injected-1"))
    client.get_subscription(request={"subscription": topics.subscription})
    client.close()
    store.close()

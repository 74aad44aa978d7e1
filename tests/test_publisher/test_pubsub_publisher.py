"""The ordered publisher (runtime/pubsub.py) on the real Pub/Sub emulator.

Many keys share a request, each key stays in order, a failure pauses only its keys until they
are resumed, a request refused as a whole is split so that only the message at fault fails, and
nothing queued is lost on close. The request count comes from the generated client the publisher
calls, wrapped only to count the calls.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest
from google.api_core.exceptions import InvalidArgument, NotFound
from google.cloud import pubsub_v1

from liberator_publisher.runtime.pubsub import KeyPausedError, OrderedPublisher, PublishLimits
from liberator_stack import Server
from tests.support.publisher import Collector, Topic, eventually


class Counted:
    """The real generated client, counting its publish calls and their sizes."""

    def __init__(self, api: Any) -> None:
        self._api = api
        self.requests: list[int] = []

    def publish(self, **kwargs: Any) -> Any:
        self.requests.append(len(kwargs["messages"]))
        return self._api.publish(**kwargs)


class Client:
    def __init__(self) -> None:
        self.api = Counted(pubsub_v1.PublisherClient().api)


@pytest.fixture()
def topic(pubsub: Server, unique: str) -> Topic:
    return Topic("liberator-local", f"ordered-{unique}", f"ordered-sub-{unique}").create()


@pytest.fixture()
def collector(topic: Topic) -> Iterator[Collector]:
    c = Collector(topic)
    yield c
    c.close()


def opened(topic_path: str, **limits: Any) -> tuple[OrderedPublisher, Counted]:
    client = Client()
    return OrderedPublisher(client, topic_path, PublishLimits(**limits)), client.api


def by_key(collector: Collector) -> dict[str, list[int]]:
    keys: dict[str, list[int]] = {}
    for m in collector.snapshot():
        keys.setdefault(m.ordering_key, []).append(int(m.attributes["n"]))
    return keys


@pytest.mark.parametrize("requests", [1, 4])
def test_many_keys_share_requests_and_each_key_keeps_its_order(
    topic: Topic, collector: Collector, requests: int
) -> None:
    publisher, api = opened(topic.topic_path, max_latency_seconds=0.05, max_requests=requests)
    # Keys 0-49, and messages without a key (unordered) among them.
    futures = [
        publisher.publish(b"{}", {"n": str(n)}, f"key-{n % 50}" if n % 7 else "")
        for n in range(2000)
    ]
    ids = [f.result(timeout=60) for f in futures]
    publisher.close()
    assert len(set(ids)) == 2000
    assert sum(api.requests) == 2000
    if requests == 1:
        assert len(api.requests) <= 20, api.requests  # 50 keys, yet requests of up to 1,000
    eventually(lambda: len(collector.snapshot()) >= 2000 or None, what="2000 messages pulled")
    keys = by_key(collector)
    assert len(keys) == 51 and len(keys[""]) == len(range(0, 2000, 7))
    for key, ns in keys.items():
        assert key == "" or ns == sorted(ns), key


def test_a_failed_request_pauses_its_keys_until_resumed(
    pubsub: Server, unique: str, collector: Collector, topic: Topic
) -> None:
    missing = f"projects/liberator-local/topics/not-yet-{unique}"
    publisher, _ = opened(missing, timeout_seconds=5)
    first = publisher.publish(b"{}", {"n": "0"}, "a")
    unordered = publisher.publish(b"{}", {"n": "0"}, "")
    with pytest.raises(NotFound):
        first.result(timeout=30)
    with pytest.raises(NotFound):
        unordered.result(timeout=30)
    # The key waits: a later message for it fails at once, without a request.
    with pytest.raises(KeyPausedError, match="'a' is paused"):
        publisher.publish(b"{}", {"n": "1"}, "a").result(timeout=5)
    # The empty key is unordered and never paused: it fails again for the missing topic.
    with pytest.raises(NotFound):
        publisher.publish(b"{}", {"n": "1"}, "").result(timeout=30)
    publisher.close()

    publisher, _ = opened(topic.topic_path)
    publisher.resume("never-paused")  # a no-op
    assert publisher.publish(b"{}", {"n": "2"}, "a").result(timeout=30)
    publisher.close()


def test_a_request_refused_as_a_whole_fails_only_the_message_at_fault(
    topic: Topic, collector: Collector
) -> None:
    publisher, api = opened(topic.topic_path, max_latency_seconds=0.2)
    futures: list[Future[str]] = []
    for n in range(6):
        if n == 2:  # the emulator refuses a request holding an empty message
            futures.append(publisher.publish(b"", {}, "b"))
        else:
            futures.append(publisher.publish(b"{}", {"n": str(n)}, "ab"[n % 2]))
    results: list[str | BaseException] = []
    for f in futures:
        error = f.exception(timeout=30)
        results.append(error if error is not None else f.result())
    publisher.close()
    assert isinstance(results[2], InvalidArgument)
    # "b" is paused behind its failed message, as Google's client pauses a key: 3 and 5 wait.
    assert isinstance(results[3], KeyPausedError) and isinstance(results[5], KeyPausedError)
    assert all(isinstance(results[n], str) for n in (0, 1, 4))
    assert api.requests[0] == 6 and sorted(api.requests[1:]) == [1, 1, 1, 1]
    eventually(lambda: len(collector.snapshot()) >= 3 or None, what="the three good messages")
    assert by_key(collector) == {"a": [0, 4], "b": [1]}


def test_flow_control_and_close_lose_nothing(topic: Topic, collector: Collector) -> None:
    # One message in flight at a time; one larger than the byte limit still goes (alone).
    publisher, api = opened(topic.topic_path, max_in_flight_messages=1, max_in_flight_bytes=10)
    futures = [publisher.publish(b"{}", {"n": str(n)}, "k") for n in range(20)]
    futures.append(publisher.publish(b"x" * 100, {"n": "20"}, "k"))
    publisher.close()  # waits for every answer
    assert all(f.done() and f.exception() is None for f in futures)
    assert api.requests == [1] * 21
    eventually(lambda: len(collector.snapshot()) >= 21 or None, what="21 messages pulled")
    assert by_key(collector) == {"k": list(range(21))}
    with pytest.raises(RuntimeError, match="closed"):
        publisher.publish(b"{}", {}, "k")


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"max_requests": 0}, "max_requests must be from 1 to 64, got 0"),
        ({"max_messages": 1001}, "max_messages must be from 1 to 1000, got 1001"),
        ({"max_bytes": 0}, "max_bytes must be from 1 to 10000000, got 0"),
        ({"max_in_flight_messages": 0}, "max_in_flight_messages must be at least 1, got 0"),
        ({"max_in_flight_bytes": -1}, "max_in_flight_bytes must be at least 1, got -1"),
        ({"max_latency_seconds": -0.1}, "max_latency_seconds must be a finite number"),
        ({"timeout_seconds": float("nan")}, "timeout_seconds must be a finite number"),
    ],
)
def test_limits_refuse_values_that_would_hang_or_be_refused(
    limits: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(f"PublishLimits.{message}")):
        PublishLimits(**limits)

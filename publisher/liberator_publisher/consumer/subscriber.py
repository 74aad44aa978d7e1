"""Consume Liberator's CloudEvents: dispatch by type, once per id, with retries and dead letters.

A feature team registers handlers by CloudEvent type (exact, ``quote.purchased``, or a prefix,
``quote.*``) and runs the loop::

    sub = Subscriber(SubscriberSettings(subscription="projects/p/subscriptions/billing",
                                        redis_url="redis://localhost:6379/0"))

    @sub.on("quote.*")
    def on_quote(event: CloudEvent) -> None: ...

    sub.run(stop_event)

Each message is parsed from the Pub/Sub binding of CloudEvents (binary mode: ``ce-*``
attributes, JSON data). Idempotency is by ``ce-id`` through a Redis key per subscription: the key
is claimed with ``SET NX`` while the handler runs (a lease, so a crashed worker never blocks the
event for good) and marked done for ``dedupe_ttl_seconds`` after success. A handler that raises
leads to a nack with exponential backoff (through the ack deadline); after the subscription's
``max_delivery_attempts`` Pub/Sub moves the message to its dead-letter topic. When the
subscription has no dead-letter policy but ``dead_letter_topic`` is set, the library counts the
attempts in Redis and moves the message itself. Unknown types are acked and counted. Messages that
are not CloudEvents are forwarded to the dead-letter topic when there is one, and acked.

See docs/consuming.md.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter as Tally
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

import redis
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1
from prometheus_client import CollectorRegistry, Counter

from liberator_publisher.consumer.settings import DeadLetters, SubscriberSettings, backoff_seconds
from liberator_publisher.core.cloudevent import (
    CloudEvent,
    Handler,
    MalformedEventError,
    check_pattern,
    matches,
    parse_message,
)
from liberator_publisher.core.times import parse_rfc3339

# The settings (settings.py) and the event (core/cloudevent.py) are named here too: a feature
# team imports the whole library from this one module.
__all__ = [
    "CloudEvent",
    "DeadLetters",
    "Handler",
    "MalformedEventError",
    "Subscriber",
    "SubscriberSettings",
    "backoff_seconds",
    "check_pattern",
    "matches",
    "parse_message",
    "parse_time",
]


def parse_time(text: str, name: str = "time") -> datetime:
    """An RFC 3339 timestamp (``2026-01-02T03:04:05.678Z``) as an aware UTC datetime; raises
    ``ValueError`` naming ``name`` for anything else (dates alone, missing offsets)."""
    return parse_rfc3339(text, name)


log = logging.getLogger(__name__)

REASON_ATTRIBUTE = "liberator-deadletter-reason"
"""Attribute the library adds when it forwards a message to the dead-letter topic itself."""


OUTCOMES = ("handled", "duplicate", "unknown", "failed", "dead_lettered", "malformed", "busy")


_C = TypeVar("_C")


class Subscriber:
    """Pulls one subscription and dispatches each CloudEvent to the handler of its type."""

    def __init__(
        self,
        settings: SubscriberSettings,
        *,
        registry: CollectorRegistry | None = None,
        subscriber: pubsub_v1.SubscriberClient | None = None,
        publisher: pubsub_v1.PublisherClient | None = None,
        redis_client: redis.Redis | None = None,
    ) -> None:
        """``subscriber``, ``publisher`` (for dead letters) and ``redis_client`` (made with
        ``decode_responses=True``) are the clients to use; each one not given is made from
        ``settings`` (Pub/Sub from the environment) and closed by :meth:`close`. Clients
        passed in stay open: their owner closes them."""
        self.settings = settings
        self._handlers: list[tuple[str, Handler]] = []
        self._owned: list[Any] = []
        self._client = (
            subscriber if subscriber is not None else self._own(pubsub_v1.SubscriberClient())
        )
        self._publisher: pubsub_v1.PublisherClient | None = publisher
        self._redis = (
            redis_client
            if redis_client is not None
            else self._own(redis.Redis.from_url(settings.redis_url, decode_responses=True))
        )
        self._policy: DeadLetters | None = None
        self.counts: Tally[str] = Tally()
        """How many messages ended in each outcome (see ``OUTCOMES``)."""
        self._metric = Counter(
            "liberator_subscriber_messages",
            "Messages by outcome.",
            ["outcome"],
            registry=registry if registry is not None else CollectorRegistry(),
        )

    # -- handlers --

    def on(self, pattern: str) -> Callable[[Handler], Handler]:
        """Decorator: register the function for ``pattern`` (exact, ``prefix.*`` or ``*``)."""

        def register(handler: Handler) -> Handler:
            self.add(pattern, handler)
            return handler

        return register

    def add(self, pattern: str, handler: Handler) -> None:
        """Register ``handler`` for ``pattern``; an exact type beats the longest prefix."""
        self._handlers.append((check_pattern(pattern), handler))

    def handler_for(self, event_type: str) -> Handler | None:
        """The handler for ``event_type``: the exact one, else the longest matching prefix."""
        best: tuple[int, Handler] | None = None
        for pattern, handler in self._handlers:
            if not matches(pattern, event_type):
                continue
            rank = 10**6 if pattern == event_type else len(pattern)
            if best is None or rank > best[0]:
                best = (rank, handler)
        return None if best is None else best[1]

    # -- the loop --

    def run(self, stop: threading.Event) -> None:
        """Pull and handle until ``stop`` is set."""
        while not stop.is_set():
            self.run_once()

    def run_once(self) -> int:
        """One pull and its messages handled; returns how many messages came."""
        try:
            response = self._client.pull(
                request={
                    "subscription": self.settings.subscription,
                    "max_messages": self.settings.max_messages,
                },
                timeout=self.settings.pull_timeout_seconds,
            )
        except (gexc.DeadlineExceeded, gexc.ServiceUnavailable):
            return 0
        for received in response.received_messages:
            self._process(received)
        return len(response.received_messages)

    def close(self) -> None:
        """Close the clients this subscriber made (not those passed in)."""
        for client in self._owned:
            if isinstance(client, pubsub_v1.PublisherClient):
                client.stop()
            else:
                client.close()
        self._owned.clear()

    def _own(self, client: _C) -> _C:
        self._owned.append(client)
        return client

    # -- one message --

    def _count(self, outcome: str) -> None:
        self.counts[outcome] += 1
        self._metric.labels(outcome=outcome).inc()

    def _ack(self, ack_id: str) -> None:
        self._client.acknowledge(
            request={"subscription": self.settings.subscription, "ack_ids": [ack_id]}
        )

    def _retry_later(self, ack_id: str, seconds: int) -> None:
        # A new ack deadline of N seconds redelivers after N seconds: a nack with backoff.
        self._client.modify_ack_deadline(
            request={
                "subscription": self.settings.subscription,
                "ack_ids": [ack_id],
                "ack_deadline_seconds": seconds,
            }
        )

    def dead_letter_policy(self) -> DeadLetters:
        """Where dead letters go and after how many attempts (read once from the subscription)."""
        if self._policy is None:
            found = self._client.get_subscription(subscription=self.settings.subscription)
            policy = found.dead_letter_policy
            if policy.dead_letter_topic:
                self._policy = DeadLetters(
                    str(policy.dead_letter_topic), int(policy.max_delivery_attempts or 5), True
                )
            else:
                self._policy = DeadLetters(
                    self.settings.dead_letter_topic, self.settings.max_attempts, False
                )
                if self.settings.dead_letter_topic is None:
                    log.warning(
                        "%s has no dead-letter policy and no dead_letter_topic is set: "
                        "failing events are retried forever",
                        self.settings.subscription,
                    )
        return self._policy

    def _forward(self, topic: str, data: bytes, attributes: Mapping[str, str], reason: str) -> None:
        if self._publisher is None:
            self._publisher = self._own(pubsub_v1.PublisherClient())
        self._publisher.publish(
            topic, data, **{**attributes, REASON_ATTRIBUTE: reason[:1000]}
        ).result(timeout=60)

    def _process(self, received: Any) -> None:
        message = received.message
        attributes = dict(message.attributes)
        dead = self.dead_letter_policy()
        try:
            event = parse_message(bytes(message.data), attributes)
        except MalformedEventError as error:
            log.warning("malformed message %s: %s", message.message_id, error.reason)
            if dead.topic:
                self._forward(dead.topic, bytes(message.data), attributes, error.reason)
            self._ack(received.ack_id)
            self._count("malformed")
            return
        handler = self.handler_for(event.type)
        if handler is None:
            self._ack(received.ack_id)
            self._count("unknown")
            return
        consumer = self.settings.consumer or self.settings.subscription
        key = f"{self.settings.key_prefix}{consumer}:{event.id}"
        try:
            claimed = self._redis.set(
                key, "processing", nx=True, ex=self.settings.processing_lease_seconds
            )
            state = None if claimed else self._redis.get(key)
        except redis.RedisError as error:
            log.warning("redis unavailable, retrying %s later: %s", event.id, error)
            self._retry_later(
                received.ack_id,
                backoff_seconds(
                    1, self.settings.min_backoff_seconds, self.settings.max_backoff_seconds
                ),
            )
            self._count("busy")
            return
        if not claimed:
            if state == "done":
                self._ack(received.ack_id)
                self._count("duplicate")
            else:  # another worker holds the claim: look again once it is likely finished
                self._retry_later(received.ack_id, max(1, int(self.settings.min_backoff_seconds)))
                self._count("busy")
            return
        try:
            handler(event)
        except Exception as error:  # any handler failure means retry
            self._failed(received, event, key, error, dead)
            return
        self._redis.set(key, "done", ex=self.settings.dedupe_ttl_seconds)
        self._ack(received.ack_id)
        self._count("handled")

    def _failed(
        self, received: Any, event: CloudEvent, key: str, error: Exception, dead: DeadLetters
    ) -> None:
        self._redis.delete(key)  # release the claim so the retry can take it
        attempt = int(received.delivery_attempt or 0)
        if not dead.by_pubsub:  # Pub/Sub counts attempts only under a dead-letter policy
            attempts_key = f"{key}:attempts"
            attempt = int(self._redis.incr(attempts_key))
            self._redis.expire(attempts_key, self.settings.dedupe_ttl_seconds)
        log.warning(
            "handler failed for %s (%s), attempt %d of %d: %r",
            event.id,
            event.type,
            attempt,
            dead.max_attempts,
            error,
        )
        last = attempt >= dead.max_attempts
        if last and dead.topic and not dead.by_pubsub:
            message = received.message
            self._forward(
                dead.topic,
                bytes(message.data),
                dict(message.attributes),
                f"handler failed {attempt} times: {error!r}",
            )
            self._ack(received.ack_id)
            self._count("dead_lettered")
            return
        if last and dead.by_pubsub:
            # Pub/Sub moves it to the dead-letter topic once this attempt ends: end it now.
            self._retry_later(received.ack_id, 0)
            self._count("dead_lettered")
            return
        self._count("failed")
        self._retry_later(
            received.ack_id,
            backoff_seconds(
                attempt, self.settings.min_backoff_seconds, self.settings.max_backoff_seconds
            ),
        )

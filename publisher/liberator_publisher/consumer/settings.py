"""How a :class:`~liberator_publisher.consumer.subscriber.Subscriber` pulls, dedupes, retries
and dead-letters: its settings, checked when made, and the retry backoff.

Pure: no client. A bad setting raises ``ValueError`` naming it, so a feature team's typo fails at
start and not at the first redelivery.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["MAX_ACK_DEADLINE", "DeadLetters", "SubscriberSettings", "backoff_seconds"]

MAX_ACK_DEADLINE = 600
"""Pub/Sub's ceiling for modifyAckDeadline, in seconds."""


def backoff_seconds(attempt: int, minimum: float, maximum: float) -> int:
    """Delay before redelivery after failed attempt ``attempt`` (1-based): doubling, capped."""
    delay = minimum * 2 ** max(0, attempt - 1)
    return int(min(MAX_ACK_DEADLINE, maximum, math.ceil(delay)))


@dataclass(frozen=True)
class SubscriberSettings:
    """How a :class:`Subscriber` pulls, dedupes and retries."""

    subscription: str
    """Full subscription path, ``projects/<project>/subscriptions/<id>``."""
    redis_url: str
    """Redis for the idempotency keys (``redis://host:port/db``)."""
    dedupe_ttl_seconds: int = 86_400
    """How long a handled ``ce-id`` is remembered (default one day). Redeliveries and publisher
    retries come within minutes; a day covers them with margin at about 100 bytes per event."""
    processing_lease_seconds: int = 60
    """How long a claim lasts while a handler runs; a crashed worker's claim expires after it.
    Keep it above the slowest handler."""
    max_messages: int = 10
    """Messages per pull. They are handled one after the other, in order (per ordering key)."""
    pull_timeout_seconds: float = 10.0
    """How long one pull waits for messages."""
    min_backoff_seconds: float = 1.0
    """Redelivery delay after the first failure; it doubles with each attempt."""
    max_backoff_seconds: float = 60.0
    """The ceiling of the redelivery delay (Pub/Sub allows at most 600)."""
    max_attempts: int = 5
    """Attempts before dead-lettering when the subscription has no dead-letter policy (the
    policy's ``max_delivery_attempts`` wins when there is one)."""
    dead_letter_topic: str | None = None
    """Full topic path for dead letters when the subscription has no dead-letter policy."""
    key_prefix: str = "liberator:subscriber:"
    """Prefix of the Redis keys (``<prefix><consumer>:<ce-id>``)."""
    consumer: str = ""
    """Who has handled an event, for idempotency; default the subscription. Give a replay
    subscription and the live one the same consumer, so an event in both is handled once."""

    def __post_init__(self) -> None:
        parts = self.subscription.split("/")
        if (
            len(parts) != 4
            or parts[0] != "projects"
            or parts[2] != "subscriptions"
            or not parts[1]
            or not parts[3]
        ):
            raise ValueError(
                f"subscription: {self.subscription!r} is not a full path; write "
                "projects/<project>/subscriptions/<id>"
            )
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"redis_url: {self.redis_url!r} is not a Redis URL; write redis://host:port/db"
            )
        for name in (
            "dedupe_ttl_seconds",
            "processing_lease_seconds",
            "max_messages",
            "max_attempts",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.min_backoff_seconds <= self.max_backoff_seconds <= MAX_ACK_DEADLINE:
            raise ValueError(
                "min_backoff_seconds, max_backoff_seconds: need 0 <= min <= max <= "
                f"600, got {self.min_backoff_seconds} and {self.max_backoff_seconds}"
            )


@dataclass(frozen=True)
class DeadLetters:
    """Where messages go that cannot be handled."""

    topic: str | None
    """Full topic path, or None when there is nowhere to put them."""
    max_attempts: int
    """Attempts before a failing event is dead-lettered."""
    by_pubsub: bool
    """True when the subscription's own policy moves them (Pub/Sub counts the attempts)."""

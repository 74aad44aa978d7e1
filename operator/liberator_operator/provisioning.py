"""Pub/Sub provisioning: what a publisher needs (pure plan) and a small admin seam that makes it.

The seam wraps Google's own admin clients. Every call is idempotent: ``AlreadyExists`` on create
and ``NotFound`` on delete count as success. Errors come out as :class:`ProvisioningError`,
``transient`` when retrying may help (the handler then backs off).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from liberator_operator.model import Publisher
from liberator_operator.sidecar import seed_topic

__all__ = ["Plan", "ProvisioningError", "PubSubAdmin", "SubscriptionPlan", "build_plan"]

_TRANSIENT = (
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.InternalServerError,
    gexc.TooManyRequests,
    gexc.Aborted,
    gexc.Unknown,
    gexc.RetryError,
)
CALL_TIMEOUT = 10.0


class ProvisioningError(RuntimeError):
    """A Pub/Sub admin call failed; ``transient`` says whether a retry may succeed."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class SubscriptionPlan:
    """One declared subscription, with full resource names."""

    name: str
    """``projects/<p>/subscriptions/<id>``."""
    topic: str
    """``projects/<p>/topics/<id>`` it reads."""
    ack_deadline_seconds: int
    """Ack deadline."""
    enable_message_ordering: bool
    """Ordered delivery by ordering key."""
    filter: str = ""
    """Attribute filter; empty means every message."""
    dead_letter_topic: str = ""
    """Full dead-letter topic name; empty means none."""
    max_delivery_attempts: int = 5
    """Deliveries before dead-lettering."""


@dataclass(frozen=True)
class Plan:
    """The topics and subscriptions one EntityPublisher declares."""

    topic: str
    """Full name of the live topic."""
    seed_topic: str
    """Full name of the seed topic."""
    topics: tuple[str, ...]
    """Every topic to ensure: live, seed and dead-letter topics, without duplicates."""
    subscriptions: tuple[SubscriptionPlan, ...]
    """Every subscription to ensure, after the topics."""


def build_plan(publisher: Publisher) -> Plan:
    pubsub = publisher["spec"]["pubsub"]
    project = pubsub["project"]

    def topic_path(topic_id: str) -> str:
        return f"projects/{project}/topics/{topic_id}"

    live, seed = topic_path(pubsub["topic"]), topic_path(seed_topic(publisher))
    topics = [live, seed]
    subscriptions: list[SubscriptionPlan] = []
    for sub in pubsub.get("subscriptions") or []:
        dead = sub.get("deadLetter")
        dead_topic = topic_path(dead["topic"]) if dead else ""
        if dead_topic:
            topics.append(dead_topic)
        subscriptions.append(
            SubscriptionPlan(
                name=f"projects/{project}/subscriptions/{sub['name']}",
                topic=seed if sub.get("source", "live") == "seed" else live,
                ack_deadline_seconds=sub.get("ackDeadlineSeconds", 60),
                enable_message_ordering=sub.get("enableMessageOrdering", True),
                filter=sub.get("filter", ""),
                dead_letter_topic=dead_topic,
                max_delivery_attempts=dead["maxDeliveryAttempts"] if dead else 5,
            )
        )
    return Plan(live, seed, tuple(dict.fromkeys(topics)), tuple(subscriptions))


def _error(what: str, exc: Exception) -> ProvisioningError:
    transient = isinstance(exc, _TRANSIENT)
    message = getattr(exc, "message", None) or str(exc)
    return ProvisioningError(f"{what}: {type(exc).__name__}: {message}", transient=transient)


def _idempotent(what: str, call: Callable[[], object], done: type[Exception]) -> bool:
    """Make one admin call; False when it raised ``done`` (it was done already), True when it
    did the work. Any other error comes out as a :class:`ProvisioningError` naming ``what``."""
    try:
        call()
    except done:
        return False
    except Exception as exc:
        raise _error(what, exc) from exc
    return True


class PubSubAdmin:
    """Creates and deletes topics and subscriptions (the emulator through PUBSUB_EMULATOR_HOST)."""

    def __init__(self) -> None:
        self._publisher = pubsub_v1.PublisherClient()
        self._subscriber = pubsub_v1.SubscriberClient()

    def ensure_topic(self, name: str) -> bool:
        """Create ``name`` unless it exists; True when this call created it."""
        return _idempotent(
            f"creating topic {name}",
            lambda: self._publisher.create_topic(
                request={"name": name}, retry=None, timeout=CALL_TIMEOUT
            ),
            gexc.AlreadyExists,
        )

    def ensure_subscription(self, plan: SubscriptionPlan) -> bool:
        """Create the subscription unless it exists; True when this call created it.

        An existing subscription is left as it is: Pub/Sub cannot change a filter or the
        ordering of a subscription, so changing those means a new subscription name.
        """
        request: dict[str, Any] = {
            "name": plan.name,
            "topic": plan.topic,
            "ack_deadline_seconds": plan.ack_deadline_seconds,
            "enable_message_ordering": plan.enable_message_ordering,
        }
        if plan.filter:
            request["filter"] = plan.filter
        if plan.dead_letter_topic:
            request["dead_letter_policy"] = {
                "dead_letter_topic": plan.dead_letter_topic,
                "max_delivery_attempts": plan.max_delivery_attempts,
            }
        return _idempotent(
            f"creating subscription {plan.name}",
            lambda: self._subscriber.create_subscription(
                request=request, retry=None, timeout=CALL_TIMEOUT
            ),
            gexc.AlreadyExists,
        )

    def delete_topic(self, name: str) -> None:
        _idempotent(
            f"deleting topic {name}",
            lambda: self._publisher.delete_topic(
                request={"topic": name}, retry=None, timeout=CALL_TIMEOUT
            ),
            gexc.NotFound,
        )

    def delete_subscription(self, name: str) -> None:
        _idempotent(
            f"deleting subscription {name}",
            lambda: self._subscriber.delete_subscription(
                request={"subscription": name}, retry=None, timeout=CALL_TIMEOUT
            ),
            gexc.NotFound,
        )

    def close(self) -> None:
        self._subscriber.close()
        self._publisher.transport.close()

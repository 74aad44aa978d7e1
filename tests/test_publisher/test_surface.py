"""The library surface feature teams use: pinned, lazily loaded, and the testing helper."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

import pytest

import liberator_publisher
from liberator_publisher.consumer.testing import cloud_event, pubsub_message


def test_exported_members() -> None:
    assert liberator_publisher.__all__ == [
        "CloudEvent",
        "DeadLetters",
        "Handler",
        "LiberatorError",
        "MalformedEventError",
        "Subscriber",
        "SubscriberSettings",
    ]
    for name in liberator_publisher.__all__:
        assert getattr(liberator_publisher, name).__name__ in (name, "Callable")
    with pytest.raises(AttributeError, match="no attribute 'Sidecar'"):
        _ = liberator_publisher.Sidecar  # type: ignore[attr-defined]


def test_importing_the_package_loads_no_client() -> None:
    # The sidecar imports the package; the Pub/Sub client must load only when a team uses it.
    code = (
        "import sys, liberator_publisher, liberator_publisher.core.settings; "
        "print(sorted(m for m in ('google.cloud.pubsub_v1', 'redis', 'prometheus_client') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "['redis']", out  # redis.connection: the URL parser of settings


def test_a_testing_event_is_what_the_sidecar_sends() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    event = cloud_event(
        "quote",
        {
            "_id": "Q-1",
            "price": 10,
            "v": 3,
            "_event": {"type": "quote.purchased", "correlationId": "c-1"},
        },
        operation="updated",
        version_field="v",
        event_id="e-1",
        time=when,
    )
    assert (event.id, event.type, event.subject) == ("e-1", "quote.purchased", "Q-1")
    assert event.time == when and event.source == "//tests/quote"
    assert event.data == {"_id": "Q-1", "price": 10, "v": 3}  # the context is not data
    assert event.extensions["entityversion"] == "3"
    assert event.extensions["correlationid"] == "c-1"
    data, attributes = pubsub_message("quote", {"_id": "Q-2"}, operation="deleted")
    assert attributes["ce-type"] == "quote.deleted" and attributes["ce-subject"] == "Q-2"
    assert data


def test_a_testing_event_refuses_what_liberator_could_not_publish() -> None:
    with pytest.raises(ValueError, match="operation must be one of created, updated, deleted"):
        pubsub_message("quote", {"_id": "Q-1"}, operation="purchased")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Liberator would not publish this document"):
        pubsub_message("quote", {"price": 10})  # no id

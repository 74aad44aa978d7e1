"""The Pub/Sub admin seam against Google's emulator: idempotent create and delete."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.cloud import pubsub_v1

from liberator_operator.provisioning import ProvisioningError, PubSubAdmin, build_plan
from liberator_stack import Server
from tests.test_operator.builders import publisher


@pytest.fixture()
def admin(pubsub: Server) -> Iterator[PubSubAdmin]:
    seam = PubSubAdmin()
    yield seam
    seam.close()


def test_plan_is_provisioned_once_and_removed(
    admin: PubSubAdmin, pubsub: Server, unique: str
) -> None:
    project = pubsub.exports["LIBERATOR_PUBSUB_PROJECT"]
    p = publisher(
        pubsub={
            "project": project,
            "topic": f"events-{unique}",
            "subscriptions": [
                {
                    "name": f"billing-{unique}",
                    "source": "live",
                    "ackDeadlineSeconds": 30,
                    "enableMessageOrdering": True,
                    "filter": 'attributes.ce-type = "quote.purchased"',
                    "deadLetter": {"topic": f"dead-{unique}", "maxDeliveryAttempts": 5},
                },
                {
                    "name": f"seed-{unique}",
                    "source": "seed",
                    "ackDeadlineSeconds": 60,
                    "enableMessageOrdering": False,
                },
            ],
        }
    )
    plan = build_plan(p)
    assert [admin.ensure_topic(t) for t in plan.topics] == [True, True, True]
    assert [admin.ensure_subscription(s) for s in plan.subscriptions] == [True, True]
    # Idempotent: a second pass creates nothing and does not fail.
    assert [admin.ensure_topic(t) for t in plan.topics] == [False, False, False]
    assert [admin.ensure_subscription(s) for s in plan.subscriptions] == [False, False]

    subscriber = pubsub_v1.SubscriberClient()
    try:
        billing = subscriber.get_subscription(request={"subscription": plan.subscriptions[0].name})
        assert billing.topic == plan.topic
        assert billing.ack_deadline_seconds == 30
        assert billing.enable_message_ordering
        assert billing.filter == 'attributes.ce-type = "quote.purchased"'
        assert billing.dead_letter_policy.dead_letter_topic == plan.topics[2]
        seed = subscriber.get_subscription(request={"subscription": plan.subscriptions[1].name})
        assert seed.topic == plan.seed_topic

        for sub in plan.subscriptions:
            admin.delete_subscription(sub.name)
            admin.delete_subscription(sub.name)  # already gone: fine
        for topic in plan.topics:
            admin.delete_topic(topic)
            admin.delete_topic(topic)
        publisher_client = pubsub_v1.PublisherClient()
        names = {
            t.name for t in publisher_client.list_topics(request={"project": f"projects/{project}"})
        }
        assert not names & set(plan.topics)
    finally:
        subscriber.close()


def test_subscription_on_a_missing_topic_is_a_permanent_error(
    admin: PubSubAdmin, pubsub: Server, unique: str
) -> None:
    project = pubsub.exports["LIBERATOR_PUBSUB_PROJECT"]
    p = publisher(
        pubsub={
            "project": project,
            "topic": f"never-made-{unique}",
            "subscriptions": [
                {
                    "name": f"orphan-{unique}",
                    "source": "live",
                    "ackDeadlineSeconds": 60,
                    "enableMessageOrdering": True,
                }
            ],
        }
    )
    with pytest.raises(ProvisioningError, match=f"orphan-{unique}") as caught:
        admin.ensure_subscription(build_plan(p).subscriptions[0])
    assert not caught.value.transient

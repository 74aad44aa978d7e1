"""The Pub/Sub emulator is real: ordered delivery with attributes, through Google's own client."""

from __future__ import annotations

from collections import defaultdict

from google.cloud import pubsub_v1

from liberator_stack import Server

MESSAGES = 1000
KEYS = 10


def test_ordered_publish_and_pull(pubsub: Server, unique: str) -> None:
    project = pubsub.exports["LIBERATOR_PUBSUB_PROJECT"]
    publisher = pubsub_v1.PublisherClient(
        publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True)
    )
    subscriber = pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(project, f"smoke-{unique}")
    subscription = subscriber.subscription_path(project, f"smoke-{unique}")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(
        request={"name": subscription, "topic": topic, "enable_message_ordering": True}
    )

    futures = [
        publisher.publish(
            topic, f"{i}".encode(), ordering_key=f"key-{i % KEYS}", seq=str(i), kind="smoke"
        )
        for i in range(MESSAGES)
    ]
    ids = {f.result(timeout=60) for f in futures}
    assert len(ids) == MESSAGES

    received: dict[str, list[int]] = defaultdict(list)
    seen = 0
    for _ in range(200):
        if seen >= MESSAGES:
            break
        response = subscriber.pull(
            request={"subscription": subscription, "max_messages": 500}, timeout=30
        )
        ack_ids = []
        for item in response.received_messages:
            message = item.message
            assert message.attributes["kind"] == "smoke"
            assert message.data.decode() == message.attributes["seq"]
            received[message.ordering_key].append(int(message.attributes["seq"]))
            ack_ids.append(item.ack_id)
            seen += 1
        if ack_ids:
            subscriber.acknowledge(request={"subscription": subscription, "ack_ids": ack_ids})
    assert seen == MESSAGES
    assert set(received) == {f"key-{k}" for k in range(KEYS)}
    for key, seqs in received.items():
        assert seqs == sorted(seqs), f"{key} out of order"
        assert len(seqs) == MESSAGES // KEYS

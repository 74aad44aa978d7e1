"""A feature team's consumer of quote events, with Liberator's subscriber library.

Run it against a subscription:

    SUBSCRIPTION=projects/my-project/subscriptions/billing-quotes \\
    REDIS_URL=redis://localhost:6379/0 python examples/subscriber_example.py

or try it on the local stack (it creates a topic and subscription on the Pub/Sub emulator,
publishes three events, one of them twice, handles them and exits):

    eval "$(hack/stack up pubsub redis)"
    .venv/bin/python examples/subscriber_example.py --demo
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import uuid

from google.cloud import pubsub_v1

from liberator_publisher import CloudEvent, Subscriber, SubscriberSettings

totals: dict[str, float] = {}


def build(subscription: str, redis_url: str) -> Subscriber:
    sub = Subscriber(
        SubscriberSettings(subscription=subscription, redis_url=redis_url, pull_timeout_seconds=2)
    )

    @sub.on("quote.purchased")  # an exact type wins over a prefix
    def purchased(event: CloudEvent) -> None:
        print(
            f"bill {event.subject}: {event.data['amount']} (correlation "
            f"{event.extensions.get('correlationid')})"
        )

    @sub.on("quote.*")  # every other quote event: keep the latest state
    def quote_changed(event: CloudEvent) -> None:
        if event.subject is not None:
            totals[event.subject] = float(event.data["amount"])
            print(f"{event.type} {event.subject} v{event.extensions.get('entityversion')}")

    return sub


def demo(redis_url: str) -> int:
    project = os.environ.get("LIBERATOR_PUBSUB_PROJECT", "liberator-local")
    suffix = uuid.uuid4().hex[:8]
    publisher = pubsub_v1.PublisherClient()
    admin = pubsub_v1.SubscriberClient()
    topic = publisher.create_topic(name=publisher.topic_path(project, f"demo-{suffix}")).name
    subscription = admin.create_subscription(
        request={"name": admin.subscription_path(project, f"demo-{suffix}"), "topic": topic}
    ).name
    base = {
        "ce-specversion": "1.0",
        "ce-source": "//liberator/shop/quotes",
        "content-type": "application/json",
        "ce-time": "2026-01-02T03:04:05Z",
    }
    events = [
        (
            "e-1",
            "quote.created",
            "q-1",
            '{"quoteId": "q-1", "amount": 10.5}',
            {"ce-entityversion": "1"},
        ),
        (
            "e-2",
            "quote.purchased",
            "q-1",
            '{"quoteId": "q-1", "amount": 10.5}',
            {"ce-correlationid": "order-7"},
        ),
        (
            "e-2",
            "quote.purchased",
            "q-1",
            '{"quoteId": "q-1", "amount": 10.5}',
            {"ce-correlationid": "order-7"},
        ),  # a redelivery: handled once
        ("e-3", "invoice.sent", "i-1", "{}", {}),  # no handler: acked and counted
    ]
    for event_id, kind, subject, data, extra in events:
        publisher.publish(
            topic,
            data.encode(),
            **base,
            **extra,
            **{"ce-id": f"{suffix}-{event_id}", "ce-type": kind, "ce-subject": subject},
        ).result()
    sub = build(subscription, redis_url)
    while sum(sub.counts.values()) < len(events):
        sub.run_once()
    print(f"outcomes: {dict(sorted(sub.counts.items()))}")
    sub.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--demo",
        action="store_true",
        help="create a topic on the emulator, publish samples, handle them",
    )
    args = parser.parse_args()
    redis_url = os.environ.get("REDIS_URL") or os.environ.get("LIBERATOR_REDIS_URL", "")
    if not redis_url:
        print("set REDIS_URL (or LIBERATOR_REDIS_URL)", file=sys.stderr)
        return 2
    if args.demo:
        return demo(redis_url)
    subscription = os.environ.get("SUBSCRIPTION", "")
    if not subscription:
        print("set SUBSCRIPTION=projects/<project>/subscriptions/<id>", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sub = build(subscription, redis_url)
    sub.run(stop)
    sub.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Event store throughput against a raw pull loop, from one run.

``python -m bench.eventstore [--events N]`` from the repo root starts MongoDB (mongo-java-server)
and the Pub/Sub emulator, publishes N CloudEvents to a topic with two subscriptions, then drains
one with a raw pull-and-ack loop (the baseline) and the other with the event store's pull loops
(parse, ``insert_many``, ack), and prints events/s and the ratio; B_ins (raw ``insert_many``) is
printed too, since the store writes one document per event.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack"))

from google.cloud import pubsub_v1  # noqa: E402
from pymongo import MongoClient  # noqa: E402

from bench.baselines import b_ins  # noqa: E402
from liberator_publisher.core.event import outbox_document_for_entity  # noqa: E402
from liberator_publisher.core.mapping import EventMapping  # noqa: E402
from liberator_publisher.core.message import message_for  # noqa: E402
from liberator_publisher.store.eventstore import EventStore, EventStoreSettings  # noqa: E402
from liberator_stack import Stack  # noqa: E402

MAPPING = EventMapping(
    entity_type="quote",
    source="//liberator/bench/quotes",
    id_field="quoteId",
    version_field="version",
)


def publish(topic: str, count: int) -> None:
    publisher = pubsub_v1.PublisherClient(
        publisher_options=pubsub_v1.types.PublisherOptions(
            flow_control=pubsub_v1.types.PublishFlowControl(
                message_limit=2000,
                limit_exceeded_behavior=pubsub_v1.types.LimitExceededBehavior.BLOCK,
            )
        )
    )
    base = datetime(2026, 1, 1, tzinfo=UTC)
    futures = []
    for i in range(count):
        doc = {
            "quoteId": f"q-{i % 1000}",
            "version": i // 1000 + 1,
            "amount": i * 1.5,
            "currency": "EUR",
            "lines": [{"sku": "A-1", "qty": 2}],
        }
        message = message_for(
            outbox_document_for_entity(
                doc,
                MAPPING,
                event_id=f"e-{i}",
                operation="update",
                time=base + timedelta(milliseconds=i),
            )
        )
        futures.append(publisher.publish(topic, message.data, **message.attributes))
    for future in futures:
        future.result(timeout=300)
    publisher.stop()


def raw_pull(subscription: str, count: int) -> float:
    client = pubsub_v1.SubscriberClient()
    seen = 0
    start = time.perf_counter()
    while seen < count:
        response = client.pull(
            request={"subscription": subscription, "max_messages": 1000}, timeout=10
        )
        ack_ids = [item.ack_id for item in response.received_messages]
        if ack_ids:
            client.acknowledge(request={"subscription": subscription, "ack_ids": ack_ids})
        seen += len(ack_ids)
    return time.perf_counter() - start


def stored(store: EventStore) -> float:
    return sum(
        store.registry.get_sample_value("liberator_eventstore_messages_total", {"outcome": outcome})
        or 0.0
        for outcome in ("stored", "duplicate")
    )


def store_pull(mongo_uri: str, subscription: str, count: int) -> float:
    """Seconds for ``liberator eventstore``'s loops (default workers) to store ``count``."""
    database = f"benchevents{uuid.uuid4().hex[:8]}"  # fresh, even on a reused server
    store = EventStore(
        EventStoreSettings(
            mongo_uri=mongo_uri,
            database=database,
            subscriptions=(subscription,),
            http_port=0,
            pull_timeout_seconds=2,
        )
    )
    stop = threading.Event()
    runner = threading.Thread(target=store.run, args=(stop,))
    start = time.perf_counter()
    runner.start()
    while stored(store) < count:  # the store's own counter: polling MongoDB would slow it
        time.sleep(0.02)
    elapsed = time.perf_counter() - start
    stop.set()
    runner.join()
    store.events.database.client.drop_database(database)
    store.close()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    with Stack(Path(tempfile.mkdtemp(prefix="liberator-bench-store-"))) as stack:
        # LIBERATOR_TEST_MONGO_URI points at a real MongoDB (as for the tests).
        real = os.environ.get("LIBERATOR_TEST_MONGO_URI")
        servers = ("pubsub",) if real else ("mongo", "pubsub")
        exports = stack.up(servers)
        if real:
            exports["LIBERATOR_MONGO_URI"] = real
        os.environ.update(exports)
        project = exports["LIBERATOR_PUBSUB_PROJECT"]
        admin = pubsub_v1.SubscriberClient()
        topic = (
            pubsub_v1.PublisherClient()
            .create_topic(name=f"projects/{project}/topics/bench-store")
            .name
        )
        subs = [
            admin.create_subscription(
                request={"name": f"projects/{project}/subscriptions/bench-{name}", "topic": topic}
            ).name
            for name in ("raw", "store")
        ]
        publish(topic, args.events)
        raw = raw_pull(subs[0], args.events)
        stored = store_pull(exports["LIBERATOR_MONGO_URI"], subs[1], args.events)
        raw_rate, store_rate = args.events / raw, args.events / stored
        client: MongoClient[dict[str, Any]] = MongoClient(exports["LIBERATOR_MONGO_URI"])
        database = f"benchins{uuid.uuid4().hex[:8]}"
        ins = b_ins(client, database, min(args.events, 10_000))
        client.drop_database(database)
        client.close()
        print(f"raw pull loop: {raw_rate:,.0f} events/s ({args.events} in {raw:.2f} s)")
        print(
            f"event store: {store_rate:,.0f} events/s ({args.events} in {stored:.2f} s), "
            f"{store_rate / raw_rate:.2f} x the raw pull loop"
        )
        print(
            f"B_ins: {ins.per_second:,.0f} docs/s; the event store writes one document per "
            f"event: {store_rate / ins.per_second:.2f} x B_ins"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

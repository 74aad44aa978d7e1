"""Raw baselines from DESIGN.md §7, measured with the plain clients on the same servers.

- B_ins: ``insert_many`` of small documents (docs/s).
- B_watch: draining a change stream of already-written changes (events/s).
- B_pub: a batched publish loop with flow control (msgs/s).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from google.cloud import pubsub_v1
from pymongo import MongoClient


@dataclass(frozen=True)
class Rate:
    count: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


def quote(i: int) -> dict[str, Any]:
    """A small, realistic entity document (what the benchmarks write)."""
    return {"quoteId": f"q-{i}", "version": 1, "customer": f"c-{i % 97}", "amount": i * 1.5,
            "currency": "EUR", "lines": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}]}


def b_ins(client: MongoClient[dict[str, Any]], database: str, count: int,
          batch: int = 500) -> Rate:
    coll = client[database]["bins"]
    docs = [quote(i) for i in range(count)]
    start = time.perf_counter()
    for i in range(0, count, batch):
        coll.insert_many(docs[i:i + batch], ordered=False)
    return Rate(count, time.perf_counter() - start)


def b_watch(client: MongoClient[dict[str, Any]], database: str, count: int) -> Rate:
    coll = client[database]["bwatch"]
    with coll.watch() as stream:
        stream.try_next()
        token = stream.resume_token
    for i in range(0, count, 500):
        coll.insert_many([quote(j) for j in range(i, min(count, i + 500))], ordered=False)
    seen = 0
    start = time.perf_counter()
    with coll.watch(resume_after=token, batch_size=1000, max_await_time_ms=200) as stream:
        while seen < count:
            if stream.try_next() is not None:
                seen += 1
    return Rate(seen, time.perf_counter() - start)


def b_pub(project: str, topic_id: str, count: int) -> Rate:
    settings = pubsub_v1.types.PublisherOptions(
        enable_message_ordering=True,
        flow_control=pubsub_v1.types.PublishFlowControl(
            message_limit=1000,
            limit_exceeded_behavior=pubsub_v1.types.LimitExceededBehavior.BLOCK),
    )
    publisher = pubsub_v1.PublisherClient(publisher_options=settings)
    topic = publisher.topic_path(project, topic_id)
    publisher.create_topic(name=topic)
    body = b'{"quoteId": "q-1", "version": 1, "amount": 1.5}'
    start = time.perf_counter()
    futures = [publisher.publish(topic, body, ordering_key=f"q-{i % 100}", **{"ce-id": str(i)})
               for i in range(count)]
    for future in futures:
        future.result(timeout=120)
    elapsed = time.perf_counter() - start
    publisher.stop()
    return Rate(count, elapsed)

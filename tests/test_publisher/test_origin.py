"""A fresh publisher captures every write made after its first replica connected: the origin.

Real servers (MongoDB stand-in, Redis, Pub/Sub emulator); ``liberator publish`` as a subprocess.
The lease is held by somebody else while the sidecar starts, as when another replica leads or a
crashed holder's lease has yet to expire: the writes made meanwhile must not be lost.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis
from pymongo import MongoClient

from liberator_publisher.core.status import read_status
from liberator_publisher.sidecar.leader import lease_key
from liberator_publisher.state.checkpoint import CHECKPOINT_COLLECTION
from tests.support.publisher import Collector, Publisher, eventually

HELD_MS = 6000
MAX_WRITES = 3000  # the writer's bound; at ~100 writes/s it stops long before


class Writer:
    """Inserts ``{n, at}`` continuously in a thread (bounded in count and time)."""

    def __init__(self, uri: str, database: str, collection: str) -> None:
        self.client: MongoClient[dict[str, Any]] = MongoClient(uri)
        self.collection = self.client[database][collection]
        self.done: list[tuple[int, float]] = []  # (n, monotonic time the insert returned)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Writer:
        self._thread.start()
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + 120
        for n in range(MAX_WRITES):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            self.collection.insert_one({"_id": f"w{n:05d}", "n": n})
            self.done.append((n, time.monotonic()))
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.client.close()


def test_writes_while_a_fresh_publisher_waits_for_the_lease_are_all_published(
    publisher: Publisher, collector: Collector, redis_url: str
) -> None:
    r = redis.Redis.from_url(redis_url)
    assert r.set(lease_key(publisher.name), "another-replica", px=HELD_MS, nx=True)
    writer = Writer(
        publisher.env["LIBERATOR_MONGO_URI"], publisher.database, publisher.collection
    ).start()
    eventually(lambda: len(writer.done) >= 20, what="the writer running")
    car = publisher.sidecar().start().wait_ready()
    ready_at = time.monotonic()
    assert not car.is_leader()  # the lease is still held elsewhere
    eventually(car.is_leader, what="the sidecar leads once the held lease expires")
    led_at = time.monotonic()
    eventually(lambda: writer.done[-1][1] > led_at + 1.0, what="writes after leading")
    writer.stop()

    after_ready = [f"w{n:05d}" for n, at in writer.done if at > ready_at]
    while_waiting = [n for n, at in writer.done if ready_at < at < led_at]
    assert len(while_waiting) >= 50, "the test must write while the lease is held elsewhere"
    with MongoClient(publisher.env["LIBERATOR_MONGO_URI"]) as client:
        db = client[publisher.database]
        outbox = db[publisher.outbox]
        eventually(
            lambda: (
                outbox.count_documents({"entityId": {"$in": after_ready}, "status": "published"})
                == len(after_ready)
            ),
            what=f"all {len(after_ready)} writes made after /readyz published",
        )
        origin = db[CHECKPOINT_COLLECTION].find_one({"_id": f"{publisher.name}#origin"})
        assert origin is not None
        # Every captured change is at or after the origin; the first write after it is captured.
        times = [d["clusterTime"] for d in outbox.find({}, {"clusterTime": 1})]
        assert min(times) >= origin["operationTime"]
    # Marked published means the emulator acked the publish; the collector's pull may trail it.
    eventually(
        lambda: set(after_ready) <= {m.attributes["ce-subject"] for m in collector.snapshot()},
        what=f"all {len(after_ready)} writes made after /readyz pulled from the subscription",
    )
    record = eventually(lambda: read_status(r, publisher.name), what="the status record")
    assert record["captureSince"] == (
        origin["operationTime"]
        .as_datetime()
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )
    r.close()


def test_a_standby_that_starts_later_keeps_the_earlier_origin(publisher: Publisher) -> None:
    first = publisher.sidecar().start().wait_ready()
    with MongoClient(publisher.env["LIBERATOR_MONGO_URI"]) as client:
        checkpoints = client[publisher.database][CHECKPOINT_COLLECTION]
        origin = eventually(
            lambda: checkpoints.find_one({"_id": f"{publisher.name}#origin"}),
            what="the origin recorded",
        )
        first.stop()
        time.sleep(1.1)  # a later second on the cluster clock
        client[publisher.database]["other"].insert_one({"tick": 1})
        checkpoints.delete_one({"_id": f"{publisher.name}#capture"})  # still no checkpoint
        publisher.sidecar().start().wait_ready()
        again = checkpoints.find_one({"_id": f"{publisher.name}#origin"})
    assert again is not None and again["operationTime"] == origin["operationTime"]

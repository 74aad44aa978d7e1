"""Raw baselines of docs/targets.md, measured with the plain clients on the same servers.

- B_ins: ``insert_many`` of small documents (docs/s).
- B_watch: draining a change stream of already-written changes (events/s).
- B_pub: a batched publish loop with ordering keys and ``BLOCK`` flow control (msgs/s).
- Oplog cost: an empty change-stream ``getMore`` and an ``updateLookup``-style ``find_one`` by
  ``_id``, at growing oplog lengths (their cost should not grow with the oplog).

Each takes the same document shape and ordering-key spread as the publisher benchmark, so the
ratio compares like with like.
"""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any

from pymongo import MongoClient

__all__ = [
    "IdlePoll",
    "OplogCost",
    "Rate",
    "b_idle",
    "b_ins",
    "b_pub",
    "b_watch",
    "fill_oplog",
    "oplog_cost",
    "quote",
]

INSERT_BATCH = 500
"""Documents per ``insert_many``: the publisher benchmark writes its load the same way."""


@dataclass(frozen=True)
class Rate:
    """``count`` items in ``seconds``."""

    count: int
    """How many documents, events or messages."""
    seconds: float
    """Wall-clock time they took."""

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


def quote(i: int, entities: int = 0) -> dict[str, Any]:
    """A small, realistic entity document (what the benchmarks write).

    With ``entities`` > 0 the documents are versions of that many entities (``quoteId`` repeats,
    ``version`` grows): inserts of new versions of immutable entities, so the ordering keys
    (entity ids) repeat as they do in a real collection. With 0, every document is its own entity.
    """
    key, version = (i % entities, i // entities + 1) if entities > 0 else (i, 1)
    return {
        "quoteId": f"q-{key}",
        "version": version,
        "seq": i,
        "customer": f"c-{i % 97}",
        "amount": i * 1.5,
        "currency": "EUR",
        "lines": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}],
    }


def b_ins(
    client: MongoClient[dict[str, Any]], database: str, count: int, batch: int = INSERT_BATCH
) -> Rate:
    """Insert ``count`` documents into ``<database>.bins`` in unordered batches."""
    coll = client[database]["bins"]
    docs = [quote(i) for i in range(count)]
    start = time.perf_counter()
    for i in range(0, count, batch):
        coll.insert_many(docs[i : i + batch], ordered=False)
    return Rate(count, time.perf_counter() - start)


def b_watch(
    client: MongoClient[dict[str, Any]],
    database: str,
    count: int,
    batch_size: int = 500,
    deadline: float = 300.0,
) -> Rate:
    """Drain ``count`` already-written inserts from a change stream (as the capture loop reads).

    The stream is opened before the writes (so it sees them without a resume token, which the
    emulator's quiet streams lack), and only the drain is timed.
    """
    coll = client[database]["bwatch"]
    with coll.watch(
        full_document="updateLookup", batch_size=batch_size, max_await_time_ms=200
    ) as stream:
        stream.try_next()  # opens the cursor at the current position
        for i in range(0, count, INSERT_BATCH):
            coll.insert_many(
                [quote(j) for j in range(i, min(count, i + INSERT_BATCH))], ordered=False
            )
        seen = 0
        start = time.perf_counter()
        end = time.monotonic() + deadline
        while seen < count:
            if time.monotonic() > end:
                raise RuntimeError(f"B_watch: only {seen} of {count} changes within {deadline}s")
            if stream.try_next() is not None:
                seen += 1
        return Rate(seen, time.perf_counter() - start)


@dataclass(frozen=True)
class IdlePoll:
    """Two raw change streams polled with ``try_next`` on quiet collections."""

    getmores_per_second: float
    """``getMore`` round trips per second, both streams together."""
    millicores: float
    """CPU of the two polling threads together, in thousandths of a core."""


def b_idle(
    client: MongoClient[dict[str, Any]], database: str, seconds: float, max_await_ms: int = 500
) -> IdlePoll:
    """What two idle streams cost this client (the sidecar keeps two open while it leads).

    On MongoDB a quiet ``getMore`` waits ``max_await_ms``; a server that answers at once makes
    the poll loop busy, which this figure shows.
    """
    results: list[tuple[int, float]] = []

    def loop(name: str) -> None:
        rounds = 0
        with client[database][name].watch(max_await_time_ms=max_await_ms) as stream:
            stream.try_next()
            cpu, end = time.thread_time(), time.monotonic() + seconds
            while time.monotonic() < end:
                stream.try_next()
                rounds += 1
            results.append((rounds, time.thread_time() - cpu))

    threads = [threading.Thread(target=loop, args=(name,)) for name in ("idle1", "idle2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return IdlePoll(
        getmores_per_second=sum(r for r, _ in results) / seconds,
        millicores=1000.0 * sum(c for _, c in results) / seconds,
    )


def message_for(i: int, entities: int) -> tuple[bytes, dict[str, str], str]:
    """(data, attributes, ordering key) shaped like the publisher's CloudEvents."""
    doc = quote(i, entities)
    attributes = {
        "ce-specversion": "1.0",
        "ce-id": f"{i:032x}",
        "ce-source": "//liberator/bench/quotes",
        "ce-type": "quote.created",
        "ce-time": "2026-01-01T00:00:00.000Z",
        "ce-subject": doc["quoteId"],
        "ce-entityversion": str(doc["version"]),
        "content-type": "application/json",
    }
    return json.dumps(doc).encode(), attributes, doc["quoteId"]


def b_pub(project: str, topic_id: str, count: int, entities: int = 100) -> Rate:
    """Publish ``count`` CloudEvent-shaped messages to a new topic; time until every ack."""
    from google.cloud import pubsub_v1  # noqa: PLC0415  (grpc is slow to import; only here)

    settings = pubsub_v1.types.PublisherOptions(
        enable_message_ordering=True,
        flow_control=pubsub_v1.types.PublishFlowControl(
            message_limit=2000,
            byte_limit=64 * 1024 * 1024,
            limit_exceeded_behavior=pubsub_v1.types.LimitExceededBehavior.BLOCK,
        ),
    )
    publisher = pubsub_v1.PublisherClient(publisher_options=settings)
    topic = publisher.topic_path(project, topic_id)
    publisher.create_topic(name=topic)
    messages = [message_for(i, entities) for i in range(count)]
    start = time.perf_counter()
    futures = [
        publisher.publish(topic, data, ordering_key=key, **attributes)
        for data, attributes, key in messages
    ]
    for future in futures:
        future.result(timeout=300)
    elapsed = time.perf_counter() - start
    publisher.stop()
    return Rate(count, elapsed)


FILL_BATCH = 1000
"""Documents per ``insert_many`` while filling the oplog."""
WARMUP = 20
"""Untimed operations of each kind before the timed ones."""


def oplog_length(client: MongoClient[dict[str, Any]]) -> int | None:
    """Entries in ``local.oplog.rs``, or None where the server refuses it to this user."""
    try:
        return client["local"]["oplog.rs"].estimated_document_count()
    except Exception:  # a real server may refuse the oplog
        return None


def fill_oplog(
    client: MongoClient[dict[str, Any]], database: str, entries: int, deadline: float = 600.0
) -> int:
    """Insert into ``<database>.fill`` (``_id`` 0, 1, ...) until the oplog holds ``entries``.

    Returns how many documents ``fill`` holds. Where the oplog cannot be read, inserts
    ``entries`` documents in all. Bounded by ``deadline`` seconds.
    """
    coll = client[database]["fill"]
    have = coll.estimated_document_count()
    end = time.monotonic() + deadline
    while True:
        length = oplog_length(client)
        missing = entries - (length if length is not None else have)
        if missing <= 0:
            return have
        if time.monotonic() > end:
            raise RuntimeError(f"oplog fill: {length} of {entries} entries within {deadline}s")
        batch = min(FILL_BATCH, missing)
        coll.insert_many([{**quote(i), "_id": i} for i in range(have, have + batch)], ordered=False)
        have += batch


@dataclass(frozen=True)
class OplogCost:
    """Seconds per operation at one oplog length (mean and median of ``ops`` timings)."""

    oplog: int | None
    """Entries in the oplog when measured (None: unreadable)."""
    documents: int
    """Documents in the looked-up collection."""
    ops: int
    getmore_mean: float
    getmore_p50: float
    lookup_mean: float
    lookup_p50: float


def oplog_cost(
    client: MongoClient[dict[str, Any]], database: str, documents: int, ops: int
) -> OplogCost:
    """Time ``ops`` empty ``getMore`` calls and ``ops`` ``find_one`` by ``_id``.

    The stream is on a quiet collection (each ``getMore`` finds nothing, as a live stream's
    poll does); the look-ups hit random documents of ``<database>.fill``, as ``updateLookup``
    reads one document by ``_id`` per update event.
    """
    getmores: list[float] = []
    coll = client[database]["fill"]
    for key in range(min(WARMUP, documents)):  # untimed: the JIT's and the caches' first calls
        coll.find_one({"_id": key})
    with client[database]["quiet"].watch(max_await_time_ms=1) as stream:
        stream.try_next()  # the aggregate; every later call is one getMore
        for _ in range(WARMUP):
            stream.try_next()
        for _ in range(ops):
            start = time.perf_counter()
            assert stream.try_next() is None, "the quiet collection got an event"
            getmores.append(time.perf_counter() - start)
    picks = random.Random(7).choices(range(documents), k=ops)
    lookups: list[float] = []
    for key in picks:
        start = time.perf_counter()
        found = coll.find_one({"_id": key})
        lookups.append(time.perf_counter() - start)
        assert found is not None, f"fill document {key} is missing"
    return OplogCost(
        oplog=oplog_length(client),
        documents=documents,
        ops=ops,
        getmore_mean=statistics.fmean(getmores),
        getmore_p50=statistics.median(getmores),
        lookup_mean=statistics.fmean(lookups),
        lookup_p50=statistics.median(lookups),
    )

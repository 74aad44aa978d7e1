"""The bench's side of one publisher's collections: inserts in, outbox outcomes out.

Each measurement writes through pymongo and reads the outcome from the outbox (``status``,
``publishedAt`` is set when Pub/Sub acknowledged the message).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection

from bench.baselines import INSERT_BATCH, quote
from bench.proc import poll
from bench.sidecar import OUTBOX

__all__ = ["CHECKPOINTS", "Load"]

CHECKPOINTS = "liberator.checkpoints"


class Load:
    """The bench's view of one publisher's collections."""

    def __init__(self, client: MongoClient[dict[str, Any]], database: str) -> None:
        self.db = client[database]
        self.entities: Collection[dict[str, Any]] = self.db["quotes"]
        self.outbox: Collection[dict[str, Any]] = self.db[OUTBOX]
        self.database = database

    def published(self) -> int:
        return self.outbox.count_documents({"status": "published"})

    def not_published(self) -> int:
        return self.outbox.count_documents({"status": {"$ne": "published"}})

    def writes(self) -> int | None:
        """Oplog entries of this database's three collections so far (None if unreadable)."""
        try:
            oplog = self.db.client["local"]["oplog.rs"]
            return sum(
                oplog.count_documents({"ns": f"{self.database}.{name}"})
                for name in ("quotes", OUTBOX, CHECKPOINTS)
            )
        except Exception:  # a real server may refuse the oplog to this user
            return None

    def wait_capturing(self, deadline: float = 120) -> None:
        """Wait for the capture checkpoint: the leader's stream is open from then on.

        The lease alone is not enough: a first start captures from "now", so a change written
        before the capture stream opened is (by design) not captured.
        """
        poll(
            lambda: self.db[CHECKPOINTS].find_one({"_id": f"bench/{self.database}#capture"}),
            what="the capture checkpoint is written",
            deadline=deadline,
        )

    def oplog_size(self) -> int | None:
        try:
            return self.db.client["local"]["oplog.rs"].estimated_document_count()
        except Exception:  # a real server may refuse the oplog to this user
            return None

    def empty_getmore(self, rounds: int = 5) -> float:
        """Mean seconds of a ``getMore`` that finds nothing (what a live stream pays per poll)."""
        with self.db["quiet"].watch(max_await_time_ms=100) as stream:
            stream.try_next()
            start = time.perf_counter()
            for _ in range(rounds):
                stream.try_next()
            return (time.perf_counter() - start) / rounds

    def insert(self, first: int, count: int, entities: int) -> None:
        for i in range(first, first + count, INSERT_BATCH):
            self.entities.insert_many(
                [quote(j, entities) for j in range(i, min(first + count, i + INSERT_BATCH))],
                ordered=False,
            )

    def wait_published(self, total: int, deadline: float) -> None:
        poll(
            lambda: self.published() >= total,
            what=f"{total} outbox documents published",
            deadline=deadline,
            every=0.5,
        )

    def last_published_at(self) -> float:
        doc = self.outbox.find_one({"status": "published"}, sort=[("publishedAt", -1)])
        assert doc is not None
        return _epoch(doc["publishedAt"])

    def published_times(self) -> dict[str, float]:
        """entityId -> publishedAt (epoch seconds) of every published event."""
        return {
            d["entityId"]: _epoch(d["publishedAt"])
            for d in self.outbox.find({"status": "published"}, {"entityId": 1, "publishedAt": 1})
        }


def _epoch(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()

"""The seed ledger: what a seed has published, and where its scan stands.

One MongoDB collection next to the entity collection (``<collection>.seedledger``) holds, per
seed id:

- one *entry* per published event, ``_id = "<seed-id>\\n<entity-id>[\\n<version>]"``: a second run
  of the same seed finds the entry and publishes nothing new;
- one *checkpoint*, ``_id = "<seed-id>"``: the last entity id whose documents were all handled,
  the counts at that point, the start time (the seed events' ``ce-time``) and the capture position
  recorded before the scan. A crashed seed resumes after it.

Entries are written only after Pub/Sub acknowledged the events, and the checkpoint only after
its entries, so a crash can repeat events (with the same ``ce-id``) but never lose one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pymongo.collection import Collection
from pymongo.errors import BulkWriteError

__all__ = ["LEDGER_SUFFIX", "Checkpoint", "Ledger", "entry_key"]

LEDGER_SUFFIX = ".seedledger"
"""The ledger collection is ``<collection>`` plus this suffix, in the same database."""
_DUPLICATE_KEY = 11000


def entry_key(seed_id: str, entity_id: str, version: str | None) -> str:
    """The ledger ``_id`` of one seeded event (seed ids and the separator never clash)."""
    return f"{seed_id}\n{entity_id}" if version is None else f"{seed_id}\n{entity_id}\n{version}"


@dataclass
class Checkpoint:
    """Where a seed stands: saved after each batch, read when a seed starts."""

    seed_id: str
    """The seed this is the checkpoint of."""
    mode: str
    """``latest`` or ``history``; a resumed run must use the same."""
    filter: str
    """The filter as canonical extended JSON; a resumed run must use the same."""
    started_at: datetime
    """When the seed first started; every seed event of this seed carries it as ``ce-time``."""
    phase: str = "Running"
    """``Running``, ``Succeeded`` or ``Failed``."""
    after: Any = None
    """The last entity id (its BSON value) whose documents were all handled; None at the start."""
    counts: dict[str, int] = field(default_factory=dict)
    """``seeded``, ``already``, ``skipped``, ``failed``, ``scanned`` up to ``after``."""
    capture: dict[str, Any] = field(default_factory=dict)
    """The capture stream position recorded before the scan (``resumeToken``, ``time``)."""
    completed_at: datetime | None = None
    """When the scan finished."""

    def document(self) -> dict[str, Any]:
        return {"_id": self.seed_id, "kind": "checkpoint", "mode": self.mode,
                "filter": self.filter, "startedAt": self.started_at, "phase": self.phase,
                "after": self.after, "counts": dict(self.counts), "capture": self.capture,
                "completedAt": self.completed_at}

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Checkpoint:
        return cls(seed_id=str(document["_id"]), mode=str(document["mode"]),
                   filter=str(document["filter"]), started_at=document["startedAt"],
                   phase=str(document.get("phase", "Running")), after=document.get("after"),
                   counts={k: int(v) for k, v in dict(document.get("counts") or {}).items()},
                   capture=dict(document.get("capture") or {}),
                   completed_at=document.get("completedAt"))


class Ledger:
    """The ledger of one seed id in one collection."""

    def __init__(self, collection: Collection[dict[str, Any]], seed_id: str) -> None:
        self.collection = collection
        self.seed_id = seed_id

    def recorded(self, keys: Iterable[str]) -> set[str]:
        """Which of ``keys`` (from :func:`entry_key`) are already in the ledger."""
        wanted = list(keys)
        if not wanted:
            return set()
        found = self.collection.find({"_id": {"$in": wanted}}, projection={"_id": 1})
        return {str(doc["_id"]) for doc in found}

    def record(self, entries: Iterable[tuple[str, str]], at: datetime) -> None:
        """Add ``(key, event id)`` entries; ones already present are left as they are."""
        docs = [{"_id": key, "seed": self.seed_id, "eventId": event_id, "at": at}
                for key, event_id in entries]
        if not docs:
            return
        try:
            self.collection.insert_many(docs, ordered=False)
        except BulkWriteError as error:
            others = [e for e in error.details.get("writeErrors", [])
                      if e.get("code") != _DUPLICATE_KEY]
            if others:
                raise

    def checkpoint(self) -> Checkpoint | None:
        """The saved checkpoint of this seed, if any."""
        found = self.collection.find_one({"_id": self.seed_id})
        return None if found is None else Checkpoint.from_document(found)

    def save(self, checkpoint: Checkpoint) -> None:
        """Write the checkpoint (replacing the previous one)."""
        self.collection.replace_one({"_id": self.seed_id}, checkpoint.document(), upsert=True)

    def entries(self) -> int:
        """How many events this seed has recorded."""
        return self.collection.count_documents({"seed": self.seed_id})

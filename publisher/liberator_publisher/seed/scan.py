"""The seed's scan: the entity collection read in entity-id order (then version), each entity's
documents together, and the seed events they become.

Mode ``latest`` takes the highest version of each entity, ``history`` every version document,
oldest first. A bad document (no id or version, unencodable, over Pub/Sub's limits) is counted
as skipped and logged, never published; if an entity's latest version is bad, no older one
stands in for it. The only I/O is the cursor.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson import json_util
from pymongo.collection import Collection

from liberator_publisher.core.event import outbox_document_for_entity
from liberator_publisher.core.mapping import EventMapping, entity_id_of, version_of
from liberator_publisher.core.message import Unpublishable, message_for
from liberator_publisher.core.outbox import FAILED
from liberator_publisher.seed.options import (
    SEED_ATTRIBUTE,
    Pacer,
    SeedOptions,
    Summary,
    seed_event_id,
)

__all__ = ["ORDERING_BUCKETS", "Scan", "SeedEvent"]

log = logging.getLogger("liberator_publisher.seed.seeder")  # the seed's lines share one logger

ORDERING_BUCKETS = 16
"""History mode's ordering keys: ``seed-<crc32(entity id) % 16>``."""


@dataclass
class SeedEvent:
    """One seed event, ready to publish."""

    entity: Any
    """The entity id's BSON value (for a retry)."""
    event_id: str
    entity_id: str
    data: bytes
    attributes: dict[str, str]
    ordering_key: str


class Scan:
    """Reads the entity collection for one seed run; counts what it reads and skips in
    ``summary``. ``time`` is the seed events' ``ce-time`` (the seed's start)."""

    def __init__(
        self,
        collection: Collection[dict[str, Any]],
        mapping: EventMapping,
        options: SeedOptions,
        *,
        pacer: Pacer,
        summary: Summary,
        time: datetime,
    ) -> None:
        self.collection = collection
        self.mapping = mapping
        self.options = options
        self.pacer = pacer
        self.summary = summary
        self.time = time

    def groups(
        self, after: Any, only: list[Any] | None
    ) -> Iterator[tuple[Any, list[dict[str, Any]]]]:
        """(entity id value, its documents) in scan order: after the entity ``after``, or
        just the entities ``only``."""
        cursor = self.collection.find(
            self._query(after, only),
            sort=self._sort(),
            batch_size=min(self.options.batch_size, 1000),
        )
        current: Any = None
        group: list[dict[str, Any]] = []
        started = False
        for document in cursor:
            self.pacer.wait()
            value = document.get(self.mapping.id_field)
            if started and value != current:
                yield current, group
                group = []
            current, started = value, True
            group.append(document)
        if started:
            yield current, group

    def events_of(self, entity: Any, documents: list[dict[str, Any]]) -> list[SeedEvent]:
        """The seed events of one entity's documents; bad documents are counted and skipped."""
        chosen: list[SeedEvent] = []
        version_field = self.mapping.version_field
        took_latest = False
        for document in documents:
            self.summary.scanned += 1
            if document.get(self.mapping.id_field) is None:
                self._skip(document, f"no id field {self.mapping.id_field!r}")
                continue
            if version_field and document.get(version_field) is None:
                self._skip(document, f"no version field {version_field!r}")
                continue
            if self.options.mode == "latest":
                if took_latest:
                    continue  # an older version: latest publishes only the first (highest)
                took_latest = True  # if the latest is bad, no older version stands in for it
            event = self._event(entity, document)
            if event is not None:
                chosen.append(event)
        return chosen

    def _query(self, after: Any, only: list[Any] | None) -> dict[str, Any]:
        parts = [dict(self.options.filter)] if self.options.filter else []
        if only is not None:
            parts.append({self.mapping.id_field: {"$in": only}})
        elif after is not None:
            # Entity ids of one BSON type resume exactly ($gt compares within a type).
            parts.append({self.mapping.id_field: {"$gt": after}})
        return {} if not parts else parts[0] if len(parts) == 1 else {"$and": parts}

    def _sort(self) -> list[tuple[str, int]]:
        order = 1 if self.options.mode == "history" else -1
        keys = [(self.mapping.id_field, 1)]
        if self.mapping.version_field:
            keys.append((self.mapping.version_field, order))
        if self.mapping.id_field != "_id":
            keys.append(("_id", order))
        return keys

    def _event(self, entity: Any, document: dict[str, Any]) -> SeedEvent | None:
        try:
            entity_id = entity_id_of(document, self.mapping)
            if self.mapping.version_field:
                version = version_of(document, self.mapping)
            elif self.options.mode == "history":
                version = json_util.dumps(document.get("_id"))  # one event per document
            else:
                version = None
        except Unpublishable as error:
            self._skip(document, error.reason)
            return None
        event_id = seed_event_id(self.mapping.source, entity_id, version)
        outbox = outbox_document_for_entity(
            document,
            self.mapping,
            event_id=event_id,
            operation="insert",
            time=self.time,
            extra_attributes={SEED_ATTRIBUTE: "true"},
        )
        if outbox["status"] == FAILED:
            self._skip(document, str(outbox.get("reason")))
            return None
        try:
            message = message_for(outbox)
        except Unpublishable as error:
            self._skip(document, error.reason)
            return None
        return SeedEvent(
            entity=entity,
            event_id=event_id,
            entity_id=entity_id,
            data=message.data,
            attributes=message.attributes,
            ordering_key=self._ordering_key(entity_id),
        )

    def _ordering_key(self, entity_id: str) -> str:
        # History needs each entity's versions in order. Any key that is a function of the
        # entity id keeps that order; a few buckets keep the keys a subscriber orders by few.
        # Latest has one event per entity: nothing to order.
        if self.options.mode != "history":
            return ""
        return f"seed-{zlib.crc32(entity_id.encode('utf-8')) % ORDERING_BUCKETS}"

    def _skip(self, document: Mapping[str, Any], reason: str) -> None:
        self.summary.skipped += 1
        log.warning("skipped document _id=%s: %s", json_util.dumps(document.get("_id")), reason)

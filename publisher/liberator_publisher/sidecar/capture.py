"""Capture: the entity collection's change stream into the outbox, one document per change.

Changes arrive in batches from a read-ahead thread; each batch is one unordered ``insert_many``.
An event's ``_id`` comes from its resume token, so a change read twice (after a crash, before the
checkpoint moved) collides on ``_id``: a duplicate key counts as already captured. The checkpoint
moves only after the insert, and only forward, so no change is skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import bson
from bson import Timestamp
from pymongo.collection import Collection

from liberator_publisher.core.contract import BATCH_SIZE, MAX_AWAIT_MS
from liberator_publisher.core.event import (
    DOCUMENT_OPERATIONS,
    EventMapping,
    needs_identity,
    outbox_document_for_change,
)
from liberator_publisher.core.outbox import FAILED
from liberator_publisher.core.status import Progress
from liberator_publisher.runtime.logs import fields
from liberator_publisher.sidecar.metrics import Metrics
from liberator_publisher.sidecar.outbox import insert_outbox
from liberator_publisher.sidecar.source import ChangeReader, ChangeSource
from liberator_publisher.state.checkpoint import Checkpoints, Position
from liberator_publisher.state.identity import Identities

__all__ = ["Capture", "CaptureSettings", "change_time"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaptureSettings:
    """Tuning of the capture loop."""

    batch_size: int = BATCH_SIZE
    """Most changes read and inserted at once."""
    max_await_ms: int = MAX_AWAIT_MS
    """How long one ``getMore`` waits on a quiet stream."""
    heartbeat_seconds: float = 5.0
    """Least time between checkpoint writes of a quiet stream's post-batch token."""
    gather_ms: int = 25
    """After a short batch, how long the reader waits before its next ``getMore`` (fewer,
    larger batches under load; see ``ChangeReader``)."""


def change_time(change: Mapping[str, Any]) -> datetime | None:
    """When the change happened: its ``wallTime``, else its ``clusterTime``, tz-aware UTC."""
    wall = change.get("wallTime")
    if isinstance(wall, datetime):
        return wall if wall.tzinfo else wall.replace(tzinfo=UTC)
    cluster = change.get("clusterTime")
    if isinstance(cluster, Timestamp):
        return cluster.as_datetime()
    return None


class Capture:
    """One run of the capture loop for one leader term."""

    def __init__(
        self,
        *,
        entities: Collection[dict[str, Any]],
        outbox: Collection[dict[str, Any]],
        identities: Identities,
        checkpoints: Checkpoints,
        mapping: EventMapping,
        metrics: Metrics,
        progress: Progress,
        epoch: int,
        pod: str,
        settings: CaptureSettings,
        open_source: Callable[[Position], ChangeSource] | None = None,
        on_written: Callable[[], None] = lambda: None,
    ) -> None:
        """``on_written`` is called after each outbox insert (the relay reads it sooner)."""
        self.entities = entities
        self.on_written = on_written
        self.open_source = open_source or self._open_source
        self.outbox = outbox
        self.identities = identities
        self.checkpoints = checkpoints
        self.mapping = mapping
        self.metrics = metrics
        self.progress = progress
        self.epoch = epoch
        self.pod = pod
        self.settings = settings

    def run(self, active: Callable[[], bool]) -> None:
        """Capture until ``active()`` turns false.

        Raises ``StreamLostError``, ``FencedError`` or the error that stopped it.
        """
        saved = self.checkpoints.load("capture")
        start = saved
        if saved.empty:
            origin = self.checkpoints.origin()
            if origin is not None:
                start = Position(operation_time=origin)
                log.info(
                    "capture starts at the origin (no checkpoint yet)",
                    extra=fields(origin=origin.as_datetime().isoformat()),
                )
            else:
                # The reader's first heartbeat carries the position it opened at; saved at once.
                log.warning(
                    "capture starts at the current position (no checkpoint, no origin: "
                    "MongoDB reported no cluster time)"
                )
        reader = self.open_source(start)
        reader.start()
        saved_at = time.monotonic()
        try:
            while active():
                self.progress.beat("capture", time.monotonic())
                batch = reader.next_batch(timeout=0.5)
                if batch is None:
                    continue
                if batch.changes:
                    if self.progress.unsaved_since is None:
                        # Kept across a failed write and the loop's retry: the stall rule
                        # counts from the first change that did not make it (stall.py).
                        self.progress.unsaved_since = time.monotonic()
                    self._write(batch.changes)
                    self.on_written()
                    self._save(batch.position)
                    self.progress.unsaved_since = None
                    saved, saved_at = batch.position, time.monotonic()
                    continue
                self.progress.capture_lag_seconds = 0.0
                self.metrics.capture_lag.set(0.0)
                quiet_for = time.monotonic() - saved_at
                if batch.position != saved and (
                    saved.empty or quiet_for >= self.settings.heartbeat_seconds
                ):
                    self._save(batch.position)  # heartbeat: a quiet stream stays on the oplog
                    saved, saved_at = batch.position, time.monotonic()
        finally:
            reader.stop()
            reader.join(timeout=2.0)
            self.progress.forget("capture")

    def _known_id(self, change: Mapping[str, Any], seen: dict[bytes, Any]) -> Any:
        """For a delete by business id: the id value last seen for its document, else None.

        Also notes what ``change`` shows of its document, for later deletes in the same batch
        (not in the outbox yet)."""
        key = change.get("documentKey")
        key_id = key.get("_id") if isinstance(key, Mapping) else None
        # By its BSON: an _id may be a sub-document or a list, which Python cannot hash.
        try:
            slot = bson.encode({"_id": key_id})
        except (TypeError, bson.errors.InvalidDocument):
            return None  # no BSON form: the outbox document fails on its own, naming it
        document = change.get("fullDocument")
        if isinstance(document, Mapping) and document.get(self.mapping.id_field) is not None:
            seen[slot] = document[self.mapping.id_field]
        if not needs_identity(change, self.mapping):
            return None
        if slot in seen:
            return seen[slot]
        return self.identities.find(key_id)

    def _open_source(self, position: Position) -> ChangeSource:
        return ChangeReader(
            self.entities,
            position,
            full_document="updateLookup",
            batch_size=self.settings.batch_size,
            max_await_ms=self.settings.max_await_ms,
            gather_ms=self.settings.gather_ms,
            name="capture-reader",
        )

    def _save(self, position: Position) -> None:
        self.checkpoints.save("capture", self.epoch, position, self.pod)

    def _write(self, changes: list[dict[str, Any]]) -> None:
        now = datetime.now(UTC)
        documents = []
        seen: dict[bytes, Any] = {}  # document _id (BSON) -> id value, from earlier changes
        for change in changes:
            if change.get("operationType") not in DOCUMENT_OPERATIONS:
                continue  # e.g. createIndexes with expanded events: nothing to publish
            known = self._known_id(change, seen)
            document = outbox_document_for_change(
                change, self.mapping, captured_at=now, known_id=known
            )
            # The oplog position orders the sweep among events captured in the same batch.
            if "clusterTime" in change:
                document.setdefault("clusterTime", change["clusterTime"])
            documents.append(document)
        new = insert_outbox(self.outbox, documents)
        failed = [documents[i] for i in sorted(new) if documents[i]["status"] == FAILED]
        self.metrics.captured.inc(len(new))
        if failed:
            self.metrics.failed.labels(stage="capture").inc(len(failed))
            for document in failed:
                log.warning(
                    "event cannot be published; stored as failed",
                    extra=fields(event_id=document["_id"], reason=document.get("reason")),
                )
        happened = change_time(changes[-1])
        if happened is not None:
            lag = max(0.0, (now - happened).total_seconds())
            self.progress.capture_lag_seconds = lag
            self.metrics.capture_lag.set(lag)
            self.progress.event_at(happened)
        log.debug("captured", extra=fields(changes=len(changes), new=len(new)))

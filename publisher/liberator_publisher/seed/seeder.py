"""``liberator seed``: publish the existing entities once to the seed topic.

The scan reads the entity collection sorted by entity id (then version), so each entity's documents
come together. Mode ``latest`` publishes the highest version of each entity, ``history`` every
version document, oldest first. Events have the live format (``event.outbox_document_for_entity``)
plus ``ce-seed: "true"``; their ``ce-id`` is a UUID5 of source, entity id and version, so a repeat
carries the same id, and their ``ce-time`` is the seed's start time, which sorts them before any
live change that follows the start.

A ledger (``ledger.py``: the range of entity ids already published, per seed id) makes a rerun
publish nothing new and lets a killed seed resume after its checkpoint. Progress goes to stderr,
a Redis hash (``liberator:seed:<seed-id>``) mirrors it for the operator, and the last line on
stdout is ``seeded=N skipped=M failed=K``.

Exit codes: 0 done (even with skipped or failed documents), 2 usage or configuration error,
1 fatal runtime error. See docs/seeding.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from bson import json_util
from bson.json_util import JSONMode, JSONOptions
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.errors import OperationFailure, PyMongoError

from liberator_publisher.core import validation as rules
from liberator_publisher.core.contract import seed_key
from liberator_publisher.core.event import (
    FAILED,
    EventMapping,
    Unpublishable,
    message_for,
    outbox_document_for_entity,
)
from liberator_publisher.core.iam import denied_message
from liberator_publisher.core.settings import Settings
from liberator_publisher.core.times import rfc3339
from liberator_publisher.core.validation import InvalidValue
from liberator_publisher.runtime import logs
from liberator_publisher.runtime.command import Command, UsageError
from liberator_publisher.seed.ledger import LEDGER_SUFFIX, Checkpoint, Ledger, LedgerError
from liberator_publisher.state.checkpoint import CHECKPOINT_COLLECTION, CheckpointError, Checkpoints
from liberator_publisher.state.identity import IDENTITY_SUFFIX, remember_identities

__all__ = [
    "COMMAND",
    "MODES",
    "SEED_ATTRIBUTE",
    "Pacer",
    "SeedOptions",
    "Summary",
    "check_collection",
    "parse_filter",
    "run_seed",
    "seed_event_id",
]

log = logging.getLogger(__name__)

MODES = ("latest", "history")
SEED_ATTRIBUTE = "ce-seed"
"""The extension attribute that marks seed events (value ``"true"``)."""
# Fixed namespace: seed ids depend only on source, entity id and version.
SEED_ID_NAMESPACE = uuid.UUID("3d0c5b1e-9a77-5f0e-8a43-2b6c1f9e7d10")
_SEED_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,252}")
_JSON = JSONOptions(json_mode=JSONMode.RELAXED, tz_aware=True, tzinfo=UTC)
_PROGRESS_EVERY = 2.0  # seconds between progress lines
ORDERING_BUCKETS = 16
"""History mode's ordering keys: ``seed-<crc32(entity id) % 16>``."""


def seed_event_id(source: str, entity_id: str, version: str | None) -> str:
    """The ``ce-id`` of a seed event: the same entity version always gets the same id."""
    return str(uuid.uuid5(SEED_ID_NAMESPACE, f"{source}\n{entity_id}\n{version or ''}"))


def parse_filter(text: str) -> dict[str, Any]:
    """``--filter``: a MongoDB query in relaxed extended JSON (``{"$date": ...}`` works)."""
    try:
        value = json_util.loads(text, json_options=_JSON)
    except (ValueError, TypeError) as error:
        raise UsageError(f"--filter: not JSON ({error}); give a MongoDB query such as "
                         "'{\"region\": \"eu\"}'") from None
    if not isinstance(value, dict):
        raise UsageError(f"--filter: must be a JSON object (a MongoDB query), not "
                         f"{type(value).__name__}")
    return value


@dataclass(frozen=True)
class SeedOptions:
    """The flags of ``liberator seed``."""

    topic: str
    """Seed topic id (``--topic``), in ``LIBERATOR_PUBSUB_PROJECT``."""
    seed_id: str
    """Keys the ledger, checkpoint and Redis status (``--seed-id``)."""
    mode: str = "latest"
    """``latest`` (one event per entity) or ``history`` (every version document)."""
    filter: Mapping[str, Any] = field(default_factory=dict)
    """A MongoDB query selecting the documents (``--filter``)."""
    batch_size: int = 500
    """Documents per batch: per publish wait and checkpoint (``--batch-size``)."""
    rate_limit: float = 0.0
    """Documents per second, 0 for no limit (``--rate-limit``)."""
    allow_empty: bool = False
    """Seed a collection that does not exist (yet) on purpose: nothing to publish, and the seed
    succeeds. Without it such a seed is refused, since it is most often a typo
    (``--allow-empty``, EventSeed ``spec.allowEmpty``)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"--mode: {self.mode!r} is not one of {', '.join(MODES)}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size: must be at least 1, got {self.batch_size}")
        if self.rate_limit < 0:
            raise UsageError(f"--rate-limit: must be 0 (no limit) or more, got {self.rate_limit}")
        if not _SEED_ID.fullmatch(self.seed_id):
            raise UsageError(f"--seed-id: {self.seed_id!r} is not a seed id; use letters, "
                             "digits and . _ / - (such as shop/quotes-seed)")


@dataclass
class Summary:
    """What a seed did; ``line()`` is the last line on stdout."""

    seeded: int = 0
    """Events published by this seed (across resumed runs; a rerun of a finished seed starts
    from 0, so it shows what was new)."""
    already: int = 0
    """On a rerun of a finished seed: the events its earlier runs published (none again)."""
    skipped: int = 0
    """Bad documents: no id field, no version field, unencodable or over Pub/Sub's limits."""
    failed: int = 0
    """Events Pub/Sub refused after the client's retries; a rerun publishes just these again."""
    scanned: int = 0
    """Documents read."""
    total: int = 0
    """Documents matching the filter when the scan started (for progress and ETA)."""

    def line(self) -> str:
        return f"seeded={self.seeded} skipped={self.skipped} failed={self.failed}"

    def counts(self) -> dict[str, int]:
        return {"seeded": self.seeded, "already": self.already, "skipped": self.skipped,
                "failed": self.failed, "scanned": self.scanned}


class Pacer:
    """Keeps a rate: ``wait()`` before each document sleeps as needed.

    A token bucket holding one second of documents: after a stall (a slow batch, a pause) it
    catches up by at most one second's worth, so any window of T seconds sees at most
    rate x (T + 1) documents.
    """

    BURST_SECONDS = 1.0

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._next: float | None = None  # when the next document is due

    def delay(self) -> float:
        """Seconds to wait before the next document (0 when unlimited or behind)."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        if self._next is None:
            self._next = now
        self._next = max(self._next, now - self.BURST_SECONDS)  # no credit beyond the burst
        return max(0.0, self._next - now)

    def wait(self) -> None:
        pause = self.delay()
        if pause > 0:
            self._sleep(pause)
        if self._next is not None:
            self._next += 1.0 / self.rate


@dataclass
class _Event:
    entity: Any
    """The entity id's BSON value (for a retry)."""
    event_id: str
    entity_id: str
    data: bytes
    attributes: dict[str, str]
    ordering_key: str


class _Status:
    """The Redis hash for the operator; best effort, a Redis outage never stops the seed."""

    def __init__(self, url: str, seed_id: str) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._key = seed_key(seed_id)
        self._warned = False

    def update(self, fields: Mapping[str, str | int]) -> None:
        try:
            self._client.hset(self._key, mapping={k: v for k, v in fields.items()})
        except redis.RedisError as error:
            if not self._warned:
                log.warning("cannot write the seed status to Redis (%s): %s", self._key, error)
                self._warned = True

    def close(self) -> None:
        self._client.close()


def _rfc3339(moment: datetime | None) -> str:
    return "" if moment is None else rfc3339(moment)


def _capture_position(collection: Collection[dict[str, Any]],
                      publisher: str) -> dict[str, Any]:
    """The capture stream's position now, so live capture and the seed overlap (no gap).

    Recorded: the running sidecar's capture checkpoint (read only; absent when no sidecar has
    captured yet), a fresh change stream's resume token (MongoDB gives one even on a quiet
    stream; mongo-java-server does not), and the time.
    """
    now = datetime.now(UTC)
    position: dict[str, Any] = {"time": now, "publisherCheckpoint": None, "resumeToken": None}
    try:
        saved = Checkpoints(collection.database[CHECKPOINT_COLLECTION], publisher).load("capture")
        if not saved.empty:
            position["publisherCheckpoint"] = json_util.dumps(
                {"token": saved.token, "operationTime": saved.operation_time})
    except (PyMongoError, CheckpointError) as error:
        log.warning("cannot read the sidecar's capture checkpoint: %s", error)
    try:
        with collection.watch(max_await_time_ms=1) as stream:
            stream.try_next()
            if stream.resume_token is not None:
                position["resumeToken"] = json_util.dumps(stream.resume_token)
    except PyMongoError as error:
        log.info("no change stream position recorded (%s); the time stands for it", error)
    return position


@dataclass
class _Batch:
    """Events published together, and what the checkpoint becomes once they are acknowledged."""

    sent: list[tuple[_Event, Any]]
    """Each event with its publish future."""
    after: Any
    """The last entity id of the batch (all of its documents are in it)."""
    counts: dict[str, int]
    """``scanned`` and ``skipped`` when the batch was cut."""


class _Seeder:
    def __init__(self, settings: Settings, options: SeedOptions, mongo: MongoClient[Any],
                 publisher: pubsub_v1.PublisherClient, status: _Status) -> None:
        self.settings = settings
        self.options = options
        self.mapping: EventMapping = settings.mapping()
        self.collection: Collection[dict[str, Any]] = mongo[settings.database][settings.collection]
        self.ledger = Ledger(mongo[settings.database][settings.collection + LEDGER_SUFFIX],
                             options.seed_id)
        # Deletes carry only the document _id: with a business id, record it (see identity.py).
        self.identities: Collection[dict[str, Any]] | None = (
            None if self.mapping.id_field == "_id"
            else mongo[settings.database][settings.collection + IDENTITY_SUFFIX])
        self.publisher = publisher
        self.topic = publisher.topic_path(settings.pubsub_project, options.topic)
        self.status = status
        self.summary = Summary()
        self.pacer = Pacer(options.rate_limit)
        self.retry: list[Any] = []
        self._retrying = False
        self._last_progress = 0.0
        self._started = time.monotonic()
        self._time = datetime.now(UTC)  # replaced by the checkpoint's start time in run()

    # -- the scan --

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

    def _groups(self, after: Any,
                only: list[Any] | None) -> Iterator[tuple[Any, list[dict[str, Any]]]]:
        """(entity id value, its documents) in scan order."""
        cursor = self.collection.find(self._query(after, only), sort=self._sort(),
                                      batch_size=min(self.options.batch_size, 1000))
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

    def _events_of(self, entity: Any, documents: list[dict[str, Any]]) -> list[_Event]:
        """The seed events of one entity's documents; bad documents are counted and skipped."""
        chosen: list[_Event] = []
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

    def _event(self, entity: Any, document: dict[str, Any]) -> _Event | None:
        version_field = self.mapping.version_field
        probe = outbox_document_for_entity(document, self.mapping, event_id="probe",
                                           operation="insert", time=self._time,
                                           extra_attributes={SEED_ATTRIBUTE: "true"})
        if probe["status"] == FAILED:
            self._skip(document, str(probe.get("reason")))
            return None
        entity_id = str(probe["entityId"])
        if version_field:
            version: str | None = probe["attributes"].get("ce-entityversion")
        elif self.options.mode == "history":
            version = json_util.dumps(document.get("_id"))  # one event per document
        else:
            version = None
        event_id = seed_event_id(self.mapping.source, entity_id, version)
        outbox = dict(probe, _id=event_id)
        outbox["attributes"] = dict(probe["attributes"], **{"ce-id": event_id})
        try:
            message = message_for(outbox)
        except Unpublishable as error:
            self._skip(document, error.reason)
            return None
        return _Event(entity=entity, event_id=event_id, entity_id=entity_id,
                      data=message.data, attributes=message.attributes,
                      ordering_key=self._ordering_key(entity_id))

    def _ordering_key(self, entity_id: str) -> str:
        # History needs each entity's versions in order. Any key that is a function of the
        # entity id keeps that order; a few buckets instead of one key per entity spare the
        # client one sequencer and one publish RPC per entity (10x faster on the emulator).
        # Latest has one event per entity: nothing to order.
        if self.options.mode != "history":
            return ""
        return f"seed-{zlib.crc32(entity_id.encode('utf-8')) % ORDERING_BUCKETS}"

    def _skip(self, document: Mapping[str, Any], reason: str) -> None:
        self.summary.skipped += 1
        log.warning("skipped document _id=%s: %s", json_util.dumps(document.get("_id")), reason)

    # -- publishing: one batch in flight while the next one is read --

    def _send(self, events: list[_Event], after: Any) -> _Batch:
        sent = [(event, self.publisher.publish(self.topic, event.data,
                                               ordering_key=event.ordering_key,
                                               **event.attributes)) for event in events]
        return _Batch(sent=sent, after=after,
                      counts={"scanned": self.summary.scanned, "skipped": self.summary.skipped})

    def _settle(self, batch: _Batch, checkpoint: Checkpoint) -> None:
        for event, future in batch.sent:
            try:
                future.result(timeout=600)
            except (gexc.NotFound, gexc.PermissionDenied):
                raise  # every other event would fail the same way: stop the seed
            except Exception as error:  # the client already retried what is retryable
                self.summary.failed += 1
                if event.entity not in self.retry:
                    self.retry.append(event.entity)
                log.error("publish failed for entity %s (ce-id %s): %s", event.entity_id,
                          event.event_id, error)
                if event.ordering_key:
                    self.publisher.resume_publish(self.topic, event.ordering_key)
                continue
            self.summary.seeded += 1
        if batch.after is not None and not self._retrying:  # a retry leaves the range as is
            checkpoint.after = batch.after
        checkpoint.counts = {**self.summary.counts(), **batch.counts}
        checkpoint.retry = list(self.retry)
        self._save(checkpoint)

    # -- the run --

    def run(self) -> Summary:
        options = self.options
        filter_text = json_util.dumps(options.filter, json_options=_JSON, sort_keys=True)
        checkpoint = self.ledger.checkpoint()
        only: list[Any] | None = None
        if checkpoint is not None and (checkpoint.mode != options.mode
                                       or checkpoint.filter != filter_text):
            raise UsageError(
                f"--seed-id: seed {options.seed_id!r} ran with --mode {checkpoint.mode} "
                f"--filter {checkpoint.filter}; rerun it with the same flags, or use a new "
                "--seed-id")
        if checkpoint is None:
            checkpoint = Checkpoint(seed_id=options.seed_id, mode=options.mode,
                                    filter=filter_text, started_at=datetime.now(UTC),
                                    capture=_capture_position(self.collection,
                                                              self.settings.publisher))
            self.ledger.save(checkpoint)
        elif checkpoint.phase == "Succeeded":
            if not checkpoint.retry:
                log.info("seed %s finished at %s; nothing new to publish", options.seed_id,
                         _rfc3339(checkpoint.completed_at))
                self.summary.already = checkpoint.counts.get("seeded", 0)
                # The status shows the seed's own counts again (say, after a Redis restart).
                self.status.update({**checkpoint.counts, "phase": "Succeeded",
                                    "startedAt": _rfc3339(checkpoint.started_at),
                                    "completedAt": _rfc3339(checkpoint.completed_at)})
                return self.summary
            only = list(checkpoint.retry)  # a finished seed with failures: retry just those
            log.info("seed %s: retrying %d entities whose publish failed", options.seed_id,
                     len(only))
            for name, value in checkpoint.counts.items():  # the seed's counts go on
                setattr(self.summary, name, value)
            self.summary.failed = 0
            self._retrying = True
            checkpoint.phase = "Running"
        else:  # Running or Failed: a crashed run, resume after its checkpoint
            log.info("resuming seed %s after entity %s", options.seed_id,
                     json_util.dumps(checkpoint.after))
            for name, value in checkpoint.counts.items():
                setattr(self.summary, name, value)
            self.retry = list(checkpoint.retry)
        self._time = checkpoint.started_at if checkpoint.started_at.tzinfo \
            else checkpoint.started_at.replace(tzinfo=UTC)
        try:
            self.summary.total = self.collection.count_documents(dict(options.filter))
        except OperationFailure as error:
            raise UsageError(f"--filter: MongoDB refused it: {error}") from None
        self.status.update({"phase": "Running", "startedAt": _rfc3339(self._time),
                            "completedAt": "", "total": self.summary.total,
                            "captureTime": _rfc3339(checkpoint.capture.get("time")),
                            **self.summary.counts()})
        self._scan(checkpoint, only)
        checkpoint.phase = "Succeeded"
        checkpoint.completed_at = datetime.now(UTC)
        self._save(checkpoint, final=True)
        return self.summary

    def _scan(self, checkpoint: Checkpoint, only: list[Any] | None) -> None:
        inflight: _Batch | None = None
        pending: list[_Event] = []
        pending_docs = 0
        keys: list[tuple[Any, Any]] = []  # (document _id, entity id) for deletes by business id
        last: Any = None
        for entity, documents in self._groups(checkpoint.after, only):
            pending.extend(self._events_of(entity, documents))
            pending_docs += len(documents)
            if self.identities is not None and entity is not None:
                keys.extend((document["_id"], entity) for document in documents)
            last = entity if entity is not None else last
            if pending_docs >= self._batch():
                self._remember(keys)
                keys = []
                batch = self._send(pending, last)
                if inflight is not None:
                    self._settle(inflight, checkpoint)
                inflight, pending, pending_docs = batch, [], 0
        self._remember(keys)
        batch = self._send(pending, last)
        if inflight is not None:
            self._settle(inflight, checkpoint)
        self._settle(batch, checkpoint)
        if only is not None:
            checkpoint.retry = list(self.retry)

    def _remember(self, keys: list[tuple[Any, Any]]) -> None:
        """Record which entity each scanned document is, before its events go out, so the
        sidecar can name the entity of a later delete (see ``identity``)."""
        if self.identities is not None and keys:
            remember_identities(self.identities, keys)

    def _batch(self) -> int:
        if self.options.rate_limit > 0:  # publish about once a second when paced
            return max(1, min(self.options.batch_size, int(self.options.rate_limit)))
        return self.options.batch_size

    def _save(self, checkpoint: Checkpoint, final: bool = False) -> None:
        self.ledger.save(checkpoint)
        fields: dict[str, str | int] = dict(self.summary.counts())
        if final:
            fields.update(phase="Succeeded", completedAt=_rfc3339(checkpoint.completed_at))
        self.status.update(fields)
        now = time.monotonic()
        if final or now - self._last_progress >= _PROGRESS_EVERY:
            self._last_progress = now
            self._progress(now)

    def _progress(self, now: float) -> None:
        s = self.summary
        elapsed = max(now - self._started, 1e-9)
        rate = s.scanned / elapsed
        left = max(0, s.total - s.scanned)
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        print(f"seed {self.options.seed_id}: scanned {s.scanned}/{s.total} seeded={s.seeded} "
              f"already={s.already} skipped={s.skipped} failed={s.failed} "
              f"rate={rate:.0f} docs/s eta={eta}", file=sys.stderr, flush=True)


def check_collection(mongo: MongoClient[Any], settings: Settings, allow_empty: bool) -> None:
    """Refuse a collection that does not exist (a typo, most often) unless ``allow_empty``.

    Read only: a refused seed writes nothing (no ledger collection, no status record).
    """
    database = mongo[settings.database]
    # The filter keeps the answer small; the membership test does not rely on it.
    if settings.collection in database.list_collection_names(
            filter={"name": settings.collection}):
        return
    if allow_empty:
        log.warning("collection %s.%s does not exist; --allow-empty: seeding nothing",
                    settings.database, settings.collection)
        return
    raise UsageError(
        f"LIBERATOR_COLLECTION: collection {settings.collection!r} does not exist in database "
        f"{settings.database!r}; fix the name (spec.mongo.collection), or pass --allow-empty "
        "(EventSeed spec.allowEmpty: true) to seed an absent collection on purpose")


def run_seed(settings: Settings, options: SeedOptions) -> Summary:
    """Run one seed to completion with clients built from ``settings``."""
    publisher = pubsub_v1.PublisherClient(
        # Larger batches than the default 100 messages: fewer RPCs for a bulk load.
        batch_settings=pubsub_v1.types.BatchSettings(max_messages=1000, max_bytes=9_000_000,
                                                     max_latency=0.05),
        publisher_options=pubsub_v1.types.PublisherOptions(
            enable_message_ordering=options.mode == "history",
            # Room for the batch in flight and the next one; beyond that, publish() waits.
            flow_control=pubsub_v1.types.PublishFlowControl(
                message_limit=2 * options.batch_size + 1000,
                limit_exceeded_behavior=pubsub_v1.types.LimitExceededBehavior.BLOCK)))
    mongo: MongoClient[Any] = MongoClient(settings.mongo_uri, tz_aware=True)
    status = _Status(settings.redis_url, options.seed_id)
    topic = publisher.topic_path(settings.pubsub_project, options.topic)
    try:
        try:
            publisher.get_topic(topic=topic)
        except gexc.NotFound:
            raise UsageError(f"--topic: topic {options.topic!r} does not exist in project "
                             f"{settings.pubsub_project}; create it (the operator provisions "
                             "the seed topic) or fix the name") from None
        except gexc.PermissionDenied as error:
            raise UsageError(f"--topic: {denied_message('get_topic', topic, error)}") from None
        check_collection(mongo, settings, options.allow_empty)
        seeder = _Seeder(settings, options, mongo, publisher, status)
        try:
            return seeder.run()
        except gexc.PermissionDenied as error:
            status.update({"phase": "Failed", **seeder.summary.counts()})
            raise UsageError(f"--topic: {denied_message('publish', topic, error)}") from None
        except BaseException:
            status.update({"phase": "Failed", **seeder.summary.counts()})
            raise
    finally:
        publisher.stop()
        mongo.close()
        status.close()


# -- the command line --


def _positive_int(flag: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.strip().isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be a whole number of 1 or more, "
                                             f"not {text!r}")
        return int(text)
    return parse


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"--rate-limit must be documents per second (0 for no "
                                         f"limit), not {text!r}")
    return value


def _topic(text: str) -> str:
    try:
        return rules.topic_id(text)
    except InvalidValue as invalid:
        raise argparse.ArgumentTypeError(invalid.named("--topic")) from None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--topic", required=True, type=_topic,
                        help="seed topic id (in LIBERATOR_PUBSUB_PROJECT)")
    parser.add_argument("--mode", choices=MODES, default="latest",
                        help="latest: one event per entity; history: every version document")
    parser.add_argument("--filter", default="{}",
                        help="MongoDB query in relaxed extended JSON (default {})")
    parser.add_argument("--batch-size", type=_positive_int("--batch-size"), default=500,
                        help="documents per batch (default 500)")
    parser.add_argument("--rate-limit", type=_rate, default=0.0,
                        help="documents per second, 0 = unlimited (default)")
    parser.add_argument("--allow-empty", action="store_true",
                        help="succeed with nothing to seed when the collection does not exist "
                             "(default: refuse, it is most often a typo)")
    parser.add_argument("--seed-id", default=None,
                        help="keys the ledger and checkpoint (default: $LIBERATOR_SEED or "
                             "'manual')")


def _settings(env: Mapping[str, str], topic: str) -> Settings:
    # The seed needs no live topic; the contract's parser wants one, so give it the seed topic.
    return Settings.from_env({**env, "LIBERATOR_TOPIC": topic})


def run(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    settings = _settings(env, args.topic)  # a ConfigError is a UsageError: exit 2 (cli.py)
    logs.configure(settings.log_level, settings.log_format)
    try:
        seed_id = args.seed_id or env.get("LIBERATOR_SEED", "").strip() or "manual"
        if not args.seed_id and env.get("LIBERATOR_SEED") and not _SEED_ID.fullmatch(seed_id):
            raise UsageError(f"LIBERATOR_SEED: {seed_id!r} is not <namespace>/<name> of an "
                             "EventSeed; fix it or pass --seed-id")
        options = SeedOptions(topic=args.topic, mode=args.mode, filter=parse_filter(args.filter),
                              batch_size=args.batch_size, rate_limit=args.rate_limit,
                              seed_id=seed_id, allow_empty=args.allow_empty)
        summary = run_seed(settings, options)
    except UsageError:
        raise
    except LedgerError as error:
        print(f"liberator seed: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        log.exception("seed failed")
        print(f"liberator seed: failed: {error}", file=sys.stderr)
        return 1
    print(summary.line(), flush=True)
    return 0


COMMAND = Command(name="seed", help="publish every existing entity once to the seed topic",
                  configure=configure, run=run)

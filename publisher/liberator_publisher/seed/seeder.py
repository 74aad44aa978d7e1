"""``liberator seed``: publish the existing entities once to the seed topic.

The scan (``scan.py``) reads the entity collection sorted by entity id (then version), so each
entity's documents come together. Mode ``latest`` publishes the highest version of each entity,
``history`` every version document, oldest first. Events have the live format
(``event.outbox_document_for_entity``) plus ``ce-seed: "true"``; their ``ce-id`` is a UUID5 of
source, entity id and version, so a repeat carries the same id, and their ``ce-time`` is the
seed's start time, which sorts them before any live change that follows the start.

A ledger (``ledger.py``: the range of entity ids already published, per seed id) makes a rerun
publish nothing new and lets a killed seed resume after its checkpoint, which also records the
capture stream's position at the start (``position.py``). Progress goes to stderr, a Redis hash
(``status.py``: ``liberator:seed:<seed-id>``) mirrors it for the operator, and the last line on
stdout is ``seeded=N skipped=M failed=K``.

Exit codes: 0 done (even with skipped or failed documents), 2 usage or configuration error,
1 fatal runtime error. See docs/seeding.md.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bson import json_util
from bson.json_util import JSONMode, JSONOptions
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.errors import OperationFailure

from liberator_publisher.core.iam import denied_message
from liberator_publisher.core.mapping import EventMapping
from liberator_publisher.core.settings import Settings
from liberator_publisher.core.times import rfc3339
from liberator_publisher.runtime.command import UsageError
from liberator_publisher.runtime.pubsub import OrderedPublisher, PublishLimits
from liberator_publisher.seed.ledger import LEDGER_SUFFIX, Checkpoint, Ledger
from liberator_publisher.seed.options import Pacer, SeedOptions, Summary
from liberator_publisher.seed.plan import ResumePlan, resume_plan
from liberator_publisher.seed.position import capture_position
from liberator_publisher.seed.scan import Scan, SeedEvent
from liberator_publisher.seed.status import SeedStatus
from liberator_publisher.state.identity import IDENTITY_SUFFIX, remember_identities

__all__ = ["check_collection", "run_seed"]

log = logging.getLogger(__name__)

_JSON = JSONOptions(json_mode=JSONMode.RELAXED, tz_aware=True, tzinfo=UTC)
_PROGRESS_EVERY = 2.0  # seconds between progress lines


def _rfc3339(moment: datetime | None) -> str:
    return "" if moment is None else rfc3339(moment)


@dataclass
class _Batch:
    """Events published together, and what the checkpoint becomes once they are acknowledged."""

    sent: list[tuple[SeedEvent, Any]]
    """Each event with its publish future."""
    after: Any
    """The last entity id of the batch (all of its documents are in it)."""
    counts: dict[str, int]
    """``scanned`` and ``skipped`` when the batch was cut."""


class _Seeder:
    def __init__(
        self,
        settings: Settings,
        options: SeedOptions,
        mongo: MongoClient[Any],
        publisher: OrderedPublisher,
        status: SeedStatus,
    ) -> None:
        self.settings = settings
        self.options = options
        self.mapping: EventMapping = settings.mapping()
        self.collection: Collection[dict[str, Any]] = mongo[settings.database][settings.collection]
        self.ledger = Ledger(
            mongo[settings.database][settings.collection + LEDGER_SUFFIX], options.seed_id
        )
        # Deletes carry only the document _id: with a business id, record it (see identity.py).
        self.identities: Collection[dict[str, Any]] | None = (
            None
            if self.mapping.id_field == "_id"
            else mongo[settings.database][settings.collection + IDENTITY_SUFFIX]
        )
        self.publisher = publisher
        self.status = status
        self.summary = Summary()
        self.pacer = Pacer(options.rate_limit)
        self.retry: list[Any] = []
        self._retrying = False
        self._last_progress = 0.0
        self._started = time.monotonic()
        self._time = datetime.now(UTC)  # replaced by the checkpoint's start time in run()

    # -- publishing: one batch in flight while the next one is read --

    def _send(self, events: list[SeedEvent], after: Any) -> _Batch:
        sent = [
            (
                event,
                self.publisher.publish(event.data, event.attributes, event.ordering_key),
            )
            for event in events
        ]
        return _Batch(
            sent=sent,
            after=after,
            counts={"scanned": self.summary.scanned, "skipped": self.summary.skipped},
        )

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
                log.error(
                    "publish failed for entity %s (ce-id %s): %s",
                    event.entity_id,
                    event.event_id,
                    error,
                )
                if event.ordering_key:
                    self.publisher.resume(event.ordering_key)
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
        plan = resume_plan(
            checkpoint, seed_id=options.seed_id, mode=options.mode, filter_text=filter_text
        )
        for name, value in plan.counts.items():  # the seed's counts go on
            setattr(self.summary, name, value)
        if checkpoint is not None and plan.action == "done":
            return self._done(checkpoint)
        checkpoint = self._resume(checkpoint, plan, filter_text)
        self._time = (
            checkpoint.started_at
            if checkpoint.started_at.tzinfo
            else checkpoint.started_at.replace(tzinfo=UTC)
        )
        try:
            self.summary.total = self.collection.count_documents(dict(options.filter))
        except OperationFailure as error:
            raise UsageError(f"--filter: MongoDB refused it: {error}") from None
        self.status.update(
            {
                "phase": "Running",
                "startedAt": _rfc3339(self._time),
                "completedAt": "",
                "total": self.summary.total,
                "captureTime": _rfc3339(checkpoint.capture.get("time")),
                **self.summary.counts(),
            }
        )
        self._scan(checkpoint, plan.only)
        checkpoint.phase = "Succeeded"
        checkpoint.completed_at = datetime.now(UTC)
        self._save(checkpoint, final=True)
        return self.summary

    def _done(self, checkpoint: Checkpoint) -> Summary:
        """A rerun of a finished seed with nothing to retry: publishes nothing."""
        log.info(
            "seed %s finished at %s; nothing new to publish",
            self.options.seed_id,
            _rfc3339(checkpoint.completed_at),
        )
        self.summary = Summary(already=checkpoint.counts.get("seeded", 0))
        # The status shows the seed's own counts again (say, after a Redis restart).
        self.status.update(
            {
                **checkpoint.counts,
                "phase": "Succeeded",
                "startedAt": _rfc3339(checkpoint.started_at),
                "completedAt": _rfc3339(checkpoint.completed_at),
            }
        )
        return self.summary

    def _resume(
        self, checkpoint: Checkpoint | None, plan: ResumePlan, filter_text: str
    ) -> Checkpoint:
        """The checkpoint the scan starts from: a new one (saved at once), or the ledger's for a
        retry of the failed entities or a resume after the last acknowledged one."""
        options = self.options
        if checkpoint is None:
            checkpoint = Checkpoint(
                seed_id=options.seed_id,
                mode=options.mode,
                filter=filter_text,
                started_at=datetime.now(UTC),
                capture=capture_position(self.collection, self.settings.publisher),
            )
            self.ledger.save(checkpoint)
        elif plan.action == "retry":
            log.info(
                "seed %s: retrying %d entities whose publish failed",
                options.seed_id,
                len(plan.only or []),
            )
            self._retrying = True
            checkpoint.phase = "Running"
        else:
            log.info(
                "resuming seed %s after entity %s",
                options.seed_id,
                json_util.dumps(checkpoint.after),
            )
            self.retry = list(plan.retry)
        return checkpoint

    def _scan(self, checkpoint: Checkpoint, only: list[Any] | None) -> None:
        scan = Scan(
            self.collection,
            self.mapping,
            self.options,
            pacer=self.pacer,
            summary=self.summary,
            time=self._time,
        )
        inflight: _Batch | None = None
        pending: list[SeedEvent] = []
        pending_docs = 0
        keys: list[tuple[Any, Any]] = []  # (document _id, entity id) for deletes by business id
        last: Any = None
        for entity, documents in scan.groups(checkpoint.after, only):
            pending.extend(scan.events_of(entity, documents))
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
        print(
            f"seed {self.options.seed_id}: scanned {s.scanned}/{s.total} seeded={s.seeded} "
            f"already={s.already} skipped={s.skipped} failed={s.failed} "
            f"rate={rate:.0f} docs/s eta={eta}",
            file=sys.stderr,
            flush=True,
        )


def check_collection(mongo: MongoClient[Any], settings: Settings, allow_empty: bool) -> None:
    """Refuse a collection that does not exist (a typo, most often) unless ``allow_empty``.

    Read only: a refused seed writes nothing (no ledger collection, no status record).
    """
    database = mongo[settings.database]
    # The filter keeps the answer small; the membership test does not rely on it.
    if settings.collection in database.list_collection_names(filter={"name": settings.collection}):
        return
    if allow_empty:
        log.warning(
            "collection %s.%s does not exist; --allow-empty: seeding nothing",
            settings.database,
            settings.collection,
        )
        return
    raise UsageError(
        f"LIBERATOR_COLLECTION: collection {settings.collection!r} does not exist in database "
        f"{settings.database!r}; fix the name (spec.mongo.collection), or pass --allow-empty "
        "(EventSeed spec.allowEmpty: true) to seed an absent collection on purpose"
    )


def run_seed(settings: Settings, options: SeedOptions) -> Summary:
    """Run one seed to completion with clients built from ``settings``."""
    client = pubsub_v1.PublisherClient()
    topic = client.topic_path(settings.pubsub_project, options.topic)
    # Room for the batch in flight and the next one; beyond that, publish() waits. A bulk load
    # over few keys (16 buckets, or none) goes faster with several requests in flight.
    publisher = OrderedPublisher(
        client,
        topic,
        PublishLimits(max_in_flight_messages=2 * options.batch_size + 1000, max_requests=4),
    )
    mongo: MongoClient[Any] = MongoClient(settings.mongo_uri, tz_aware=True)
    status = SeedStatus(settings.redis_url, options.seed_id)
    try:
        try:
            client.get_topic(topic=topic)
        except gexc.NotFound:
            raise UsageError(
                f"--topic: topic {options.topic!r} does not exist in project "
                f"{settings.pubsub_project}; create it (the operator provisions "
                "the seed topic) or fix the name"
            ) from None
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
        publisher.close()
        mongo.close()
        status.close()


# -- the command line --

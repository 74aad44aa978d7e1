"""``liberator eventstore``: keep every CloudEvent, once, indexed by time, type and subject.

It pulls the live and seed subscriptions (one thread each) and writes each batch with one
``insert_many`` into the events collection, ``_id = ce-id``:

- a duplicate (same ``ce-id``) is acknowledged and not stored twice;
- a storage failure nacks the batch's messages, so Pub/Sub redelivers them;
- a message that is not a CloudEvent goes to the dead-letter collection with the reason, and is
  acknowledged.

A subscription that does not exist yet (the EntityPublisher that declares it comes later) is
tried again with a doubling pause up to 30 s, logged each time; ``/readyz`` answers 503 with the
reason meanwhile, and consuming starts once it appears. No ``get_subscription`` call: pull and
acknowledge need only ``pubsub.subscriptions.consume`` (roles/pubsub.subscriber).

Messages are acknowledged only after MongoDB confirmed the write, so a SIGKILL loses nothing: the
unacknowledged messages come back, and their repeats are duplicates. ``/healthz``, ``/readyz`` and
``/metrics`` come from the sidecar's ``health`` module. See docs/consuming.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from liberator_publisher.core.cloudevent import MalformedEventError
from liberator_publisher.core.contract import DEFAULT_HTTP_PORT
from liberator_publisher.core.iam import denied_message
from liberator_publisher.runtime.command import Command, UsageError
from liberator_publisher.runtime.health import Health, HealthServer
from liberator_publisher.store.documents import (
    DEFAULT_COLLECTION,
    dead_letter_document,
    ensure_indexes,
    event_document,
    insert_ignoring_duplicates,
    subscription_path,
)
from liberator_publisher.store.flags import add_events_flags, configure_logs, events_location

__all__ = ["COMMAND", "EventStore", "EventStoreSettings"]

log = logging.getLogger(__name__)

_STUCK_AFTER = 120.0  # seconds without a finished pull before /healthz says stuck
_Batch = list[tuple[str, dict[str, Any]]]
"""Documents to insert, each with the ack id of its message."""


@dataclass(frozen=True)
class EventStoreSettings:
    """How ``liberator eventstore`` runs."""

    mongo_uri: str
    """MongoDB connection string (``--mongo-uri`` or LIBERATOR_MONGO_URI)."""
    database: str
    """Database of the events collection (``--database`` or LIBERATOR_DATABASE)."""
    subscriptions: tuple[str, ...]
    """Full subscription paths to pull (``--subscription``, repeatable)."""
    collection: str = DEFAULT_COLLECTION
    """The events collection (``--collection``)."""
    dead_letter_collection: str = ""
    """Where malformed messages go; default ``<collection>.deadletter``."""
    http_port: int = DEFAULT_HTTP_PORT
    """Port of /healthz, /readyz, /metrics (``--http-port`` or LIBERATOR_HTTP_PORT); 0 = off."""
    max_messages: int = 1000
    """Messages per pull, stored with one insert_many (``--max-messages``)."""
    pull_timeout_seconds: float = 5.0
    """How long one pull waits for messages."""
    workers: int = 2
    """Pull loops per subscription, so one stores while another pulls (order does not matter
    here: the store is ordered by its ``time`` index)."""
    wait_max_seconds: float = 30.0
    """Longest pause between tries of a subscription that does not exist yet (or is denied):
    the pauses double from 1 s up to this."""


class EventStore:
    """The pull loops, one thread per subscription, writing into one collection."""

    def __init__(
        self,
        settings: EventStoreSettings,
        registry: CollectorRegistry | None = None,
        *,
        mongo: MongoClient[dict[str, Any]] | None = None,
        subscriber: pubsub_v1.SubscriberClient | None = None,
    ) -> None:
        """``mongo`` (made with ``tz_aware=True``) and ``subscriber`` are the clients to use;
        each one not given is made from ``settings`` (Pub/Sub from the environment) and closed
        by :meth:`close`. Clients passed in stay open: their owner closes them."""
        self.settings = settings
        self._owns_mongo = mongo is None
        self._owns_subscriber = subscriber is None
        self._mongo: MongoClient[dict[str, Any]] = mongo or MongoClient(
            settings.mongo_uri, tz_aware=True, serverSelectionTimeoutMS=5000
        )
        database = self._mongo[settings.database]
        self.events = database[settings.collection]
        self.dead_letters = database[
            settings.dead_letter_collection or f"{settings.collection}.deadletter"
        ]
        self._client = subscriber or pubsub_v1.SubscriberClient()
        self._stop = threading.Event()
        self._beats: dict[str, float] = {}
        self._waiting: dict[str, str] = {}  # subscription -> why it is not consumed yet
        self._started = time.monotonic()
        self.registry = registry if registry is not None else CollectorRegistry()
        self.messages = Counter(
            "liberator_eventstore_messages",
            "Messages by outcome: stored, duplicate, malformed, failed.",
            ["outcome"],
            registry=self.registry,
        )
        self.last_time = Gauge(
            "liberator_eventstore_last_event_time_seconds",
            "ce-time of the latest stored event (Unix seconds).",
            registry=self.registry,
        )

    # -- one pull --

    def pull_once(self, subscription: str) -> int:
        """Pull one batch of ``subscription``, store it, ack or nack; returns messages seen."""
        try:
            response = self._client.pull(
                request={"subscription": subscription, "max_messages": self.settings.max_messages},
                timeout=self.settings.pull_timeout_seconds,
            )
        except (gexc.DeadlineExceeded, gexc.ServiceUnavailable):
            return 0
        # The raw protobuf: proto-plus wrappers cost more than the rest of the parsing.
        received = response._pb.received_messages
        events, dead = self._documents(received, subscription.rsplit("/", 1)[-1])
        ack: list[str] = []
        nack: list[str] = []
        for collection, batch, outcome in (
            (self.events, events, "stored"),
            (self.dead_letters, dead, "malformed"),
        ):
            if batch:
                self._store(collection, batch, outcome, ack, nack)
        if ack:
            self._client.acknowledge(request={"subscription": subscription, "ack_ids": ack})
        if nack:
            self._client.modify_ack_deadline(
                request={"subscription": subscription, "ack_ids": nack, "ack_deadline_seconds": 0}
            )
        return len(received)

    def _documents(self, received: Any, name: str) -> tuple[_Batch, _Batch]:
        """The pulled messages as (ack id, document): events, and dead letters for those that
        are not CloudEvents."""
        received_at = datetime.now(UTC)
        events: _Batch = []
        dead: _Batch = []
        for item in received:
            message = item.message
            when = (
                datetime.fromtimestamp(
                    message.publish_time.seconds + message.publish_time.nanos / 1e9, UTC
                )
                if message.HasField("publish_time")
                else None
            )
            meta = {
                "message_id": message.message_id,
                "publish_time": when,
                "subscription": name,
                "received_at": received_at,
            }
            data, attributes = bytes(message.data), dict(message.attributes)
            try:
                events.append((item.ack_id, event_document(data, attributes, **meta)))
            except MalformedEventError as error:
                log.warning(
                    "malformed message %s on %s: %s", message.message_id, name, error.reason
                )
                dead.append(
                    (
                        item.ack_id,
                        dead_letter_document(data, attributes, reason=error.reason, **meta),
                    )
                )
        return events, dead

    def _store(
        self,
        collection: Collection[dict[str, Any]],
        batch: _Batch,
        outcome: str,
        ack: list[str],
        nack: list[str],
    ) -> None:
        """Insert ``batch`` with one ``insert_many``; what MongoDB confirmed (or already had)
        goes to ``ack``, what it did not to ``nack``, so Pub/Sub redelivers it."""
        try:
            duplicates, failed = insert_ignoring_duplicates(collection, [doc for _, doc in batch])
        except PyMongoError as error:
            log.warning("storage failed, %d messages will be redelivered: %s", len(batch), error)
            nack += [ack_id for ack_id, _ in batch]
            self.messages.labels(outcome="failed").inc(len(batch))
            return
        for index, (ack_id, _) in enumerate(batch):
            (nack if index in failed else ack).append(ack_id)
        self.messages.labels(outcome="failed").inc(len(failed))
        self.messages.labels(outcome="duplicate").inc(duplicates)
        self.messages.labels(outcome=outcome).inc(len(batch) - duplicates - len(failed))
        if outcome == "stored":
            self.last_time.set(max(doc["time"] for _, doc in batch).timestamp())

    # -- the loops --

    def _loop(self, subscription: str, worker: int = 0) -> None:
        delay = 0.0
        while not self._stop.is_set():
            try:
                self.pull_once(subscription)
            except (gexc.NotFound, gexc.PermissionDenied) as error:
                # Not a crash: the operator may create the subscription later (it is declared by
                # an EntityPublisher applied after this Deployment), or IAM may still propagate.
                delay = min(self.settings.wait_max_seconds, max(1.0, delay * 2))
                reason = (
                    f"subscription {subscription} does not exist yet"
                    if isinstance(error, gexc.NotFound)
                    else denied_message("pull", subscription, error)
                )
                self._waiting[subscription] = reason
                self._beats[subscription] = time.monotonic()  # waiting is not stuck
                if worker == 0:
                    log.warning("%s; not ready, retrying in %.0fs", reason, delay)
                self._stop.wait(delay)
                continue
            except Exception:  # keep pulling; the next pull retries (and /healthz shows age)
                log.exception("pull of %s failed", subscription)
                self._stop.wait(1.0)
                continue
            if self._waiting.pop(subscription, None) is not None:
                log.info("subscription %s is there: consuming", subscription)
            delay = 0.0
            self._beats[subscription] = time.monotonic()

    def health(self) -> Health:
        now = time.monotonic()
        stuck = [
            s
            for s in self.settings.subscriptions
            if now - self._beats.get(s, self._started) > _STUCK_AFTER
        ]
        waiting = [self._waiting[s] for s in self.settings.subscriptions if s in self._waiting]
        detail = "ok" if not stuck else "stuck: " + ", ".join(stuck)
        if waiting:
            detail = "waiting: " + "; ".join(waiting)
        return Health(alive=not stuck, ready=not waiting, detail=detail)

    def run(self, stop: threading.Event | None = None) -> None:
        """Create the indexes, then pull every subscription until ``stop`` (or ``self.stop()``)."""
        if stop is not None:
            self._stop = stop
        self._started = time.monotonic()
        ensure_indexes(self.events)
        server: HealthServer | None = None
        if self.settings.http_port:
            server = HealthServer(
                self.settings.http_port, self.health, lambda: generate_latest(self.registry)
            )
            server.start()
        threads = [
            threading.Thread(
                target=self._loop,
                args=(s, n),
                daemon=True,
                name=f"eventstore-{s.rsplit('/', 1)[-1]}-{n}",
            )
            for s in self.settings.subscriptions
            for n in range(self.settings.workers)
        ]
        for thread in threads:
            thread.start()
        log.info(
            "event store running: %s into %s.%s",
            ", ".join(self.settings.subscriptions),
            self.settings.database,
            self.settings.collection,
        )
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(timeout=1.0)
        finally:
            if server is not None:
                server.stop()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """Close the clients this store made (not those passed in)."""
        if self._owns_subscriber:
            self._client.close()
        if self._owns_mongo:
            self._mongo.close()


# -- the command line --


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--subscription",
        action="append",
        required=True,
        help="subscription id or full path to store (repeatable: live and seed)",
    )
    parser.add_argument(
        "--project",
        default=None,
        help="project of subscription ids (default $LIBERATOR_PUBSUB_PROJECT)",
    )
    add_events_flags(parser)
    parser.add_argument(
        "--http-port",
        default=None,
        help=f"port of /healthz and /metrics, 0 = off (default "
        f"$LIBERATOR_HTTP_PORT or {DEFAULT_HTTP_PORT})",
    )
    parser.add_argument(
        "--max-messages", default="1000", help="messages per pull and insert (1-1000, default 1000)"
    )
    parser.add_argument(
        "--workers", default="2", help="pull loops per subscription (1-16, default 2)"
    )


def settings_from(args: argparse.Namespace, env: Mapping[str, str]) -> EventStoreSettings:
    """The settings from flags, with the contract's variables as defaults; ``UsageError``."""
    uri, database, collection = events_location(args, env)
    project = args.project if args.project is not None else env.get("LIBERATOR_PUBSUB_PROJECT")
    subscriptions = tuple(dict.fromkeys(subscription_path(s, project) for s in args.subscription))
    port_flag = "--http-port" if args.http_port is not None else "LIBERATOR_HTTP_PORT"
    port_text = (
        args.http_port if args.http_port is not None else env.get("LIBERATOR_HTTP_PORT", "")
    ).strip() or str(DEFAULT_HTTP_PORT)
    if not port_text.isdigit() or int(port_text) > 65535:
        raise UsageError(f"{port_flag}: {port_text!r} is not a port number (0-65535; 0 = off)")
    if not args.max_messages.isdigit() or not 1 <= int(args.max_messages) <= 1000:
        raise UsageError(
            f"--max-messages: {args.max_messages!r} is not a whole number from 1 to 1000"
        )
    if not args.workers.isdigit() or not 1 <= int(args.workers) <= 16:
        raise UsageError(f"--workers: {args.workers!r} is not a whole number from 1 to 16")
    return EventStoreSettings(
        mongo_uri=uri,
        database=database,
        subscriptions=subscriptions,
        collection=collection,
        http_port=int(port_text),
        max_messages=int(args.max_messages),
        workers=int(args.workers),
    )


def run(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    configure_logs(env)
    settings = settings_from(args, env)
    store = EventStore(settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        store.run(stop)
    except PyMongoError as error:
        print(f"liberator eventstore: MongoDB: {error}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


COMMAND = Command(
    name="eventstore", help="store every event, indexed by time", configure=configure, run=run
)

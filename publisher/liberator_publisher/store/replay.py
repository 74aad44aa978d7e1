"""``liberator replay``: republish stored events to a topic, to hydrate a new subscriber.

It selects events from the event store by time window (``--since`` inclusive, ``--until``
exclusive, RFC 3339), types (``--type``, repeatable, exact or ``prefix.*``) and subjects
(``--subject``, repeatable), and publishes them to ``--topic`` in ``time`` order, with the subject
as ordering key so each entity's events arrive in order. Events of one subject at the same time
(the versions of a history seed) are ordered by ``ce-entityversion``.

Each message carries the original data bytes and attributes, with the original ``ce-id``, plus
``ce-replay: "true"`` so a consumer can tell a replay from live traffic. ``--dry-run`` prints the
count and publishes nothing. The last stdout line is ``replayed=N failed=K`` (or ``events=N``).

Exit codes: 0 done, 2 usage or configuration error, 1 fatal error or a publish that failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bson import Binary
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1
from pymongo import ASCENDING, MongoClient
from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from liberator_publisher.core import validation as rules
from liberator_publisher.core.cloudevent import check_pattern
from liberator_publisher.core.times import parse_rfc3339
from liberator_publisher.runtime.command import Command, UsageError, checked, flag_or_env
from liberator_publisher.runtime.pubsub import OrderedPublisher, PublishLimits
from liberator_publisher.store.flags import add_events_flags, configure_logs, events_location

__all__ = ["COMMAND", "REPLAY_ATTRIBUTE", "Selection", "replay", "select", "selection_query"]

log = logging.getLogger(__name__)

REPLAY_ATTRIBUTE = "ce-replay"
"""Extension attribute added to every replayed message (value ``"true"``)."""
ORDER = [
    ("time", ASCENDING),
    ("version", ASCENDING),
    ("publishTime", ASCENDING),
    ("_id", ASCENDING),
]
"""Replay order: time, then entity version (equal seed times), then publish time."""


@dataclass(frozen=True)
class Selection:
    """Which stored events to replay."""

    since: datetime | None = None
    """Inclusive lower bound of ``time``; None for the beginning."""
    until: datetime | None = None
    """Exclusive upper bound of ``time``; None for no bound."""
    types: tuple[str, ...] = ()
    """Exact types or ``prefix.*`` patterns; empty for all."""
    subjects: tuple[str, ...] = ()
    """Subjects (entity ids); empty for all."""

    def __post_init__(self) -> None:
        for pattern in self.types:
            try:
                check_pattern(pattern)
            except ValueError as error:
                raise UsageError(f"--type: {error}") from None
        if self.since and self.until and self.since >= self.until:
            raise UsageError(
                "--since, --until: the window is empty (--since must be before --until)"
            )


def selection_query(selection: Selection) -> dict[str, Any]:
    """The MongoDB query of ``selection`` over the events collection (pure)."""
    query: dict[str, Any] = {}
    window: dict[str, Any] = {}
    if selection.since is not None:
        window["$gte"] = selection.since
    if selection.until is not None:
        window["$lt"] = selection.until
    if window:
        query["time"] = window
    if selection.types and "*" not in selection.types:
        exact = [t for t in selection.types if not t.endswith(".*")]
        prefixes = [t[:-1] for t in selection.types if t.endswith(".*")]
        alternatives: list[dict[str, Any]] = []
        if exact:
            alternatives.append({"type": {"$in": exact}})
        alternatives += [{"type": {"$regex": "^" + re.escape(p)}} for p in prefixes]
        query.update(alternatives[0] if len(alternatives) == 1 else {"$or": alternatives})
    if selection.subjects:
        query["subject"] = {"$in": list(selection.subjects)}
    return query


def select(
    collection: Collection[dict[str, Any]], selection: Selection
) -> Iterator[dict[str, Any]]:
    """The selected events, in replay order."""
    return iter(collection.find(selection_query(selection), sort=ORDER, batch_size=1000))


def message_of(event: Mapping[str, Any]) -> tuple[bytes, dict[str, str], str]:
    """(data, attributes, ordering key) of a stored event, as replay publishes it."""
    raw = event.get("raw")
    data = (
        raw.encode("utf-8")
        if isinstance(raw, str)
        else bytes(raw)
        if isinstance(raw, Binary | bytes)
        else b""
    )
    attributes = {str(k): str(v) for k, v in dict(event.get("attributes") or {}).items()}
    attributes[REPLAY_ATTRIBUTE] = "true"
    return data, attributes, str(event.get("subject") or "")


@dataclass
class Result:
    """What a replay did."""

    replayed: int = 0
    """Messages acknowledged by Pub/Sub."""
    failed: int = 0
    """Messages Pub/Sub refused."""
    failures: list[str] = field(default_factory=list)
    """The first few failures, for the log."""


def replay(
    events: Iterator[Mapping[str, Any]], publisher: OrderedPublisher, window: int = 1000
) -> Result:
    """Publish ``events`` through ``publisher``, waiting on every ``window`` messages."""
    result = Result()
    pending: list[tuple[str, Any]] = []

    def settle() -> None:
        for key, future in pending:
            try:
                future.result(timeout=600)
                result.replayed += 1
            except Exception as error:  # the client retried what it could
                result.failed += 1
                if len(result.failures) < 5:
                    result.failures.append(str(error))
                if key:
                    publisher.resume(key)
        pending.clear()

    for event in events:
        data, attributes, key = message_of(event)
        pending.append((key, publisher.publish(data, attributes, key)))
        if len(pending) >= window:
            settle()
    settle()
    return result


# -- the command line --


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--topic", help="topic id to publish to (required unless --dry-run)")
    parser.add_argument(
        "--project", default=None, help="project of the topic (default $LIBERATOR_PUBSUB_PROJECT)"
    )
    parser.add_argument("--since", default=None, help="RFC 3339 time, inclusive")
    parser.add_argument("--until", default=None, help="RFC 3339 time, exclusive")
    parser.add_argument(
        "--type",
        action="append",
        default=[],
        dest="types",
        help="event type or prefix.* (repeatable; default all)",
    )
    parser.add_argument(
        "--subject",
        action="append",
        default=[],
        dest="subjects",
        help="subject (entity id) (repeatable; default all)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the count only")
    add_events_flags(parser)


def _time(text: str | None, flag: str) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_rfc3339(text, flag)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _selection(args: argparse.Namespace) -> Selection:
    subjects: Sequence[str] = args.subjects
    if any(not s for s in subjects):
        raise UsageError("--subject: an empty subject selects nothing; give an entity id")
    return Selection(
        since=_time(args.since, "--since"),
        until=_time(args.until, "--until"),
        types=tuple(args.types),
        subjects=tuple(subjects),
    )


def run(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    configure_logs(env)
    selection = _selection(args)
    uri, database, collection_name = events_location(args, env)
    topic = ""
    if not args.dry_run:
        if not args.topic:
            raise UsageError("--topic: required (or pass --dry-run to count only)")
        checked(rules.topic_id, args.topic, "--topic")
        project = flag_or_env(
            args.project, env, "LIBERATOR_PUBSUB_PROJECT", "--project", rules.project_id
        )
        topic = f"projects/{project}/topics/{args.topic}"
    mongo: MongoClient[dict[str, Any]] = MongoClient(
        uri, tz_aware=True, serverSelectionTimeoutMS=10_000
    )
    try:
        events = mongo[database][collection_name]
        if args.dry_run:
            print(f"events={events.count_documents(selection_query(selection))}", flush=True)
            return 0
        client = pubsub_v1.PublisherClient()
        try:
            client.get_topic(topic=topic)
        except gexc.NotFound:
            print(
                f"liberator replay: --topic: {topic} does not exist; create it first",
                file=sys.stderr,
            )
            return 2
        # Room for the window in flight and the next one; beyond that, publish() waits.
        publisher = OrderedPublisher(client, topic, PublishLimits(max_in_flight_messages=2000))
        try:
            result = replay(select(events, selection), publisher)
        finally:
            publisher.close()
    except PyMongoError as error:
        print(f"liberator replay: MongoDB: {error}", file=sys.stderr)
        return 1
    finally:
        mongo.close()
    for failure in result.failures:
        log.error("publish failed: %s", failure)
    print(f"replayed={result.replayed} failed={result.failed}", flush=True)
    return 1 if result.failed else 0


COMMAND = Command(
    name="replay", help="republish stored events to a topic", configure=configure, run=run
)

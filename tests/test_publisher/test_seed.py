"""``liberator seed`` against the real MongoDB emulator, Pub/Sub emulator and Redis.

Pure parts (ids, pacing, flag and variable checks) are tested without servers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1
from pymongo import MongoClient

from liberator_publisher.cli import main
from liberator_publisher.core.contract import seed_key
from liberator_publisher.core.iam import denied_message
from liberator_publisher.core.settings import Settings
from liberator_publisher.runtime.command import UsageError
from liberator_publisher.seed.ledger import LEDGER_SUFFIX, Checkpoint, LedgerError
from liberator_publisher.seed.options import (
    SEED_ATTRIBUTE,
    Pacer,
    SeedOptions,
    parse_filter,
    seed_event_id,
)
from liberator_publisher.seed.seeder import run_seed
from liberator_stack import Server

ENTITIES = 2000
VERSIONS = 3
DEADLINE = 180.0
ROOT = Path(__file__).resolve().parents[2]


# -- pure parts ----------------------------------------------------------------------------------


def test_seed_event_ids_are_deterministic() -> None:
    a = seed_event_id("//liberator/shop/quotes", "q-1", "3")
    assert a == seed_event_id("//liberator/shop/quotes", "q-1", "3")
    others = {
        seed_event_id("//liberator/shop/quotes", "q-1", "4"),
        seed_event_id("//liberator/shop/quotes", "q-2", "3"),
        seed_event_id("//liberator/shop/orders", "q-1", "3"),
        seed_event_id("//liberator/shop/quotes", "q-1", None),
    }
    assert a not in others
    assert len(others) == 4


def test_pacer_spaces_documents_at_the_rate() -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    pacer = Pacer(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(9):
        pacer.wait()
    assert now[0] == pytest.approx(102.0)  # 9 documents at 4/s: the 9th at t = 8/4 s
    assert Pacer(0).delay() == 0.0
    now[0] += 60.0  # a long stall earns one second of credit, not sixty
    stalled_at = now[0]
    for _ in range(4 + 8):
        pacer.wait()
    # 4 documents of credit go at once; 8 more take 8/4 s, the last one due at 7/4 s.
    assert now[0] - stalled_at == pytest.approx(1.75)


def test_permission_denied_names_the_permission() -> None:
    # The emulator has no IAM: it never answers PermissionDenied, so the mapping from the
    # failed call to the permission it needs is tested as a pure function.
    error = gexc.PermissionDenied("User not authorized to perform this action.")
    topic = "projects/p/topics/quotes.seed"
    line = denied_message("get_topic", topic, error)
    assert "pubsub.topics.get" in line and topic in line and "roles/pubsub.viewer" in line
    assert "User not authorized" in line and "\n" not in line
    assert "pubsub.topics.publish" in denied_message("publish", topic, error)
    assert "pubsub.subscriptions.consume" in denied_message("pull", "projects/p/subscriptions/s")
    assert "docs/operations.md" in denied_message("other", topic)


def test_parse_filter() -> None:
    assert parse_filter('{"at": {"$gt": {"$date": "2026-01-01T00:00:00Z"}}}') == {
        "at": {"$gt": datetime(2026, 1, 1, tzinfo=UTC)}
    }
    for bad in ("{", "[1]", "3", "nope"):
        with pytest.raises(UsageError, match="--filter"):
            parse_filter(bad)


@pytest.mark.parametrize(
    ("change", "flag"),
    [
        ({"mode": "everything"}, "--mode"),
        ({"batch_size": 0}, "--batch-size"),
        ({"rate_limit": -1}, "--rate-limit"),
        ({"seed_id": "has space"}, "--seed-id"),
        ({"seed_id": ""}, "--seed-id"),
    ],
)
def test_options_name_the_flag(change: dict[str, Any], flag: str) -> None:
    with pytest.raises(UsageError, match=flag):
        SeedOptions(**{"topic": "seed-topic", "seed_id": "shop/seed", **change})


GOOD_ENV = {
    "LIBERATOR_MONGO_URI": "mongodb://127.0.0.1:1/?replicaSet=rs0",
    "LIBERATOR_DATABASE": "shop",
    "LIBERATOR_COLLECTION": "quotes",
    "LIBERATOR_ENTITY_TYPE": "quote",
    "LIBERATOR_PUBSUB_PROJECT": "liberator-local",
    "LIBERATOR_REDIS_URL": "redis://127.0.0.1:1/0",
}


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LIBERATOR_MONGO_URI", "http://nope"),
        ("LIBERATOR_MONGO_URI", ""),
        ("LIBERATOR_DATABASE", "a/b"),
        ("LIBERATOR_COLLECTION", "system.x"),
        ("LIBERATOR_ENTITY_TYPE", "quote type"),
        ("LIBERATOR_PUBSUB_PROJECT", "X"),
        ("LIBERATOR_REDIS_URL", "localhost:6379"),
        ("LIBERATOR_ID_FIELD", "$id"),
        ("LIBERATOR_VERSION_FIELD", "a.b"),
        ("LIBERATOR_EVENT_CONTEXT_FIELD", "$ctx"),
        ("LIBERATOR_EXCLUDE_FIELDS", "a,,b"),
        ("LIBERATOR_SOURCE", "has space"),
        ("LIBERATOR_OUTBOX_COLLECTION", "quotes"),
        ("LIBERATOR_PUBLISHER", "no-slash"),
        ("PUBSUB_EMULATOR_HOST", "no-port"),
        ("LIBERATOR_SEED", "bad seed id"),
        ("LIBERATOR_LOG_LEVEL", "LOUD"),
        ("LIBERATOR_LOG_FORMAT", "xml"),
    ],
)
def test_bad_variable_exits_2_naming_it(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, good in GOOD_ENV.items():
        monkeypatch.setenv(name, good)
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    monkeypatch.setenv(variable, value)
    assert main(["seed", "--topic", "seed-topic"]) == 2
    err = capsys.readouterr().err
    assert variable in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("flags", "flag"),
    [
        ([], "--topic"),
        (["--topic", "projects/p/topics/t"], "--topic"),
        (["--topic", "goog-x"], "not with 'goog'"),
        (["--topic", "t1", "--mode", "all"], "--mode"),
        (["--topic", "seed-topic", "--batch-size", "0"], "--batch-size"),
        (["--topic", "seed-topic", "--batch-size", "ten"], "--batch-size"),
        (["--topic", "seed-topic", "--rate-limit", "-5"], "--rate-limit"),
        (["--topic", "seed-topic", "--rate-limit", "nan"], "--rate-limit"),
        (["--topic", "seed-topic", "--filter", "{bad"], "--filter"),
        (["--topic", "seed-topic", "--filter", "[]"], "--filter"),
        (["--topic", "seed-topic", "--seed-id", "a b"], "--seed-id"),
        (["--topic", "seed-topic", "--allow-empty=yes"], "--allow-empty"),
    ],
)
def test_bad_flag_exits_2_naming_it(
    flags: list[str], flag: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, good in GOOD_ENV.items():
        monkeypatch.setenv(name, good)
    try:
        code = main(["seed", *flags])
    except SystemExit as exit_:  # argparse's own errors
        code = int(exit_.code or 0)
    assert code == 2
    assert flag in capsys.readouterr().err


# -- against the servers -------------------------------------------------------------------------


class Fixture:
    """An entity collection with versioned documents, a seed topic and an ordered subscription."""

    def __init__(self, mongo_uri: str, pubsub: Server, redis_url: str, unique: str) -> None:
        self.unique = unique
        self.env = {
            **GOOD_ENV,
            "LIBERATOR_MONGO_URI": mongo_uri,
            "LIBERATOR_DATABASE": f"seed{unique}",
            "LIBERATOR_REDIS_URL": redis_url,
            "LIBERATOR_ID_FIELD": "quoteId",
            "LIBERATOR_VERSION_FIELD": "version",
            "PUBSUB_EMULATOR_HOST": pubsub.exports["PUBSUB_EMULATOR_HOST"],
            "LIBERATOR_PUBSUB_PROJECT": pubsub.exports["LIBERATOR_PUBSUB_PROJECT"],
        }
        self.settings = Settings.from_env({**self.env, "LIBERATOR_TOPIC": "unused"})
        self.mongo: MongoClient[dict[str, Any]] = MongoClient(mongo_uri, tz_aware=True)
        self.quotes = self.mongo[self.settings.database]["quotes"]
        self.redis = redis.Redis.from_url(redis_url, decode_responses=True)
        self.publisher = pubsub_v1.PublisherClient()
        self.admin = pubsub_v1.SubscriberClient()
        project = self.settings.pubsub_project
        self.topic_id = f"seed-{unique}"
        topic = self.publisher.create_topic(
            name=self.publisher.topic_path(project, self.topic_id)
        ).name
        self.subscription = self.admin.create_subscription(
            request={
                "name": self.admin.subscription_path(project, f"seed-{unique}"),
                "topic": topic,
                "enable_message_ordering": True,
                "ack_deadline_seconds": 60,
            }
        ).name

    def insert(self, entities: int, versions: int, **extra: Any) -> None:
        docs = [
            {
                "quoteId": f"q-{i:05d}",
                "version": v,
                "amount": i * 10 + v,
                "region": "eu" if i % 4 == 0 else "us",
                **extra,
            }
            for v in range(versions, 0, -1)  # newest first: the seed must sort
            for i in range(entities)
        ]
        for start in range(0, len(docs), 1000):
            self.quotes.insert_many(docs[start : start + 1000])

    def seed(self, seed_id: str, **options: Any) -> Any:
        return run_seed(self.settings, SeedOptions(topic=self.topic_id, seed_id=seed_id, **options))

    def drain(self, expected: int, quiet: float = 3.0) -> list[Any]:
        """Pull until ``expected`` messages came and then ``quiet`` seconds brought none."""
        found: list[Any] = []
        deadline = time.monotonic() + DEADLINE
        last = time.monotonic()
        while time.monotonic() < deadline:
            response = self.admin.pull(
                request={"subscription": self.subscription, "max_messages": 1000}, timeout=5
            )
            items = response.received_messages
            if items:
                found += [item.message for item in items]
                self.admin.acknowledge(
                    request={
                        "subscription": self.subscription,
                        "ack_ids": [i.ack_id for i in items],
                    }
                )
                last = time.monotonic()
            elif len(found) >= expected and time.monotonic() - last >= quiet:
                break
        return found

    def close(self) -> None:
        self.mongo.drop_database(self.settings.database)
        self.mongo.close()
        self.redis.close()


@pytest.fixture()
def world(mongo_uri: str, pubsub: Server, redis_url: str, unique: str) -> Iterator[Fixture]:
    fixture = Fixture(mongo_uri, pubsub, redis_url, unique)
    yield fixture
    fixture.close()


def by_subject(messages: list[Any]) -> dict[str, list[Any]]:
    grouped: dict[str, list[Any]] = defaultdict(list)
    for message in messages:
        grouped[message.attributes["ce-subject"]].append(message)
    return grouped


def test_latest_publishes_each_entity_once_at_its_highest_version(world: Fixture) -> None:
    world.insert(ENTITIES, VERSIONS)
    summary = world.seed("shop/latest", mode="latest")
    assert (summary.seeded, summary.skipped, summary.failed) == (ENTITIES, 0, 0)
    assert summary.total == ENTITIES * VERSIONS
    messages = world.drain(ENTITIES)
    assert len(messages) == ENTITIES
    grouped = by_subject(messages)
    assert set(grouped) == {f"q-{i:05d}" for i in range(ENTITIES)}
    started = None
    for subject, [message] in grouped.items():
        attributes = message.attributes
        assert attributes["ce-entityversion"] == str(VERSIONS)
        assert attributes[SEED_ATTRIBUTE] == "true"
        assert attributes["ce-type"] == "quote.created"
        assert attributes["ce-id"] == seed_event_id(world.settings.source, subject, str(VERSIONS))
        data = json.loads(message.data)
        assert data["quoteId"] == subject and data["version"] == VERSIONS
        started = started or attributes["ce-time"]
        assert attributes["ce-time"] == started  # every seed event: the seed's start time
    status = world.redis.hgetall(seed_key("shop/latest"))
    assert status["phase"] == "Succeeded"
    assert (status["seeded"], status["skipped"], status["failed"]) == (str(ENTITIES), "0", "0")
    assert status["total"] == str(ENTITIES * VERSIONS)
    assert status["startedAt"] == started and status["completedAt"] >= started

    # A rerun of the same seed publishes nothing new, and restores a lost status.
    world.redis.delete(seed_key("shop/latest"))
    again = world.seed("shop/latest", mode="latest")
    assert (again.seeded, again.already) == (0, ENTITIES)
    assert world.drain(0) == []
    ledger = world.mongo[world.settings.database]["quotes" + LEDGER_SUFFIX]
    checkpoint = ledger.find_one({"_id": "shop/latest"})
    assert checkpoint is not None
    assert checkpoint["phase"] == "Succeeded"
    assert checkpoint["after"] == f"q-{ENTITIES - 1:05d}"
    assert checkpoint["counts"]["seeded"] == ENTITIES
    status = world.redis.hgetall(seed_key("shop/latest"))
    assert (status["phase"], status["seeded"]) == ("Succeeded", str(ENTITIES))


def test_history_publishes_every_version_oldest_first(world: Fixture) -> None:
    world.insert(ENTITIES, VERSIONS)
    summary = world.seed("shop/history", mode="history")
    assert (summary.seeded, summary.skipped, summary.failed) == (ENTITIES * VERSIONS, 0, 0)
    messages = world.drain(ENTITIES * VERSIONS)
    assert len(messages) == ENTITIES * VERSIONS
    assert len({m.attributes["ce-id"] for m in messages}) == ENTITIES * VERSIONS
    for subject, items in by_subject(messages).items():
        versions = [int(m.attributes["ce-entityversion"]) for m in items]
        assert versions == list(range(1, VERSIONS + 1)), subject
        assert len({m.ordering_key for m in items}) == 1  # one key per entity: in order
    again = world.seed("shop/history", mode="history")
    assert (again.seeded, again.already) == (0, ENTITIES * VERSIONS)
    assert world.drain(0) == []


def test_filter_selects_documents(world: Fixture) -> None:
    world.insert(200, 2)
    summary = world.seed("shop/eu", mode="latest", filter={"region": "eu"})
    assert summary.seeded == 50
    subjects = set(by_subject(world.drain(50)))
    assert subjects == {f"q-{i:05d}" for i in range(0, 200, 4)}


def test_bad_documents_are_counted_and_skipped(world: Fixture) -> None:
    world.insert(100, 1)
    world.quotes.insert_many(
        [
            {"version": 1, "amount": 1},  # no id field
            {"version": 2, "amount": 1},  # no id field
            {"quoteId": "no-version", "amount": 2},  # no version field
            {
                "quoteId": "big-attr",
                "version": 1,
                "_event": {"correlationId": "x" * 2000},
            },  # attribute over 1024 B
            {"quoteId": "bad-context", "version": 1, "_event": "not a sub-document"},
        ]
    )
    summary = world.seed("shop/bad", mode="history")
    assert (summary.seeded, summary.skipped, summary.failed) == (100, 5, 0)
    assert len(world.drain(100)) == 100
    latest = world.seed("shop/bad-latest", mode="latest")
    assert (latest.seeded, latest.already, latest.skipped, latest.failed) == (100, 0, 5, 0)


def test_resume_after_sigkill_and_rate_limit(world: Fixture) -> None:
    world.insert(ENTITIES, 1)
    env = {**os.environ, **world.env, "PYTHONPATH": str(ROOT / "hack")}
    argv = [
        sys.executable,
        "-m",
        "liberator_publisher.cli",
        "seed",
        "--topic",
        world.topic_id,
        "--seed-id",
        "shop/resume",
        "--rate-limit",
        "300",
        "--batch-size",
        "100",
    ]
    key = seed_key("shop/resume")
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + DEADLINE
        while int(world.redis.hget(key, "scanned") or 0) < 300:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # The rate limit, by count over a window of a few seconds (generous bounds).
        first, t1 = int(world.redis.hget(key, "scanned") or 0), time.monotonic()
        time.sleep(3)
        second, t2 = int(world.redis.hget(key, "scanned") or 0), time.monotonic()
        # At most rate x (window + 1 s of burst), plus one batch of 100 by which the counter
        # moves; one more second of slack for the clocks of two processes.
        assert second - first <= 300 * (t2 - t1 + 2) + 100, (first, second, t2 - t1)
        assert second > first
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    killed_at = int(world.redis.hget(key, "seeded") or 0)
    assert 0 < killed_at < ENTITIES
    assert world.redis.hget(key, "phase") == "Running"  # it never finished
    # Resume without the limit: it continues from its checkpoint.
    done = subprocess.run(
        [*argv[:-4], "--batch-size", "500"],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    summary_line = done.stdout.strip().splitlines()[-1]
    seeded = int(summary_line.split()[0].split("=")[1])
    assert seeded >= ENTITIES  # counts carry over; repeats of an unledgered batch may add
    assert summary_line.endswith("skipped=0 failed=0")
    assert "resuming" in done.stderr
    messages = world.drain(ENTITIES)
    grouped = by_subject(messages)
    assert set(grouped) == {f"q-{i:05d}" for i in range(ENTITIES)}
    for subject, items in grouped.items():
        assert {m.attributes["ce-id"] for m in items} == {
            seed_event_id(world.settings.source, subject, "1")
        }
    assert world.redis.hget(key, "phase") == "Succeeded"


def test_unfinished_seed_refuses_other_flags(world: Fixture) -> None:
    world.insert(10, 1)
    ledger = world.mongo[world.settings.database]["quotes" + LEDGER_SUFFIX]
    world.seed("shop/flags", mode="latest")
    ledger.update_one({"_id": "shop/flags"}, {"$set": {"phase": "Running"}})
    with pytest.raises(UsageError, match="--seed-id"):
        world.seed("shop/flags", mode="history")


def test_a_missing_collection_is_refused_and_nothing_is_written(
    world: Fixture, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    world.insert(5, 1)  # the real collection is "quotes"; the seed names a typo
    for name, value in {**world.env, "LIBERATOR_COLLECTION": "qoutes"}.items():
        monkeypatch.setenv(name, value)
    assert main(["seed", "--topic", world.topic_id, "--seed-id", "shop/typo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "'qoutes'" in err[0] and repr(world.settings.database) in err[0]
    assert "--allow-empty" in err[0]
    database = world.mongo[world.settings.database]
    assert sorted(database.list_collection_names()) == ["quotes"]  # no ledger, no checkpoint
    assert world.redis.exists(seed_key("shop/typo")) == 0
    assert world.drain(0) == []


def test_allow_empty_seeds_an_absent_collection_on_purpose(
    world: Fixture, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in world.env.items():
        monkeypatch.setenv(name, value)
    assert (
        main(["seed", "--topic", world.topic_id, "--seed-id", "shop/empty", "--allow-empty"]) == 0
    )
    assert capsys.readouterr().out.strip().splitlines()[-1] == "seeded=0 skipped=0 failed=0"
    status = world.redis.hgetall(seed_key("shop/empty"))
    assert (status["phase"], status["seeded"]) == ("Succeeded", "0")
    assert world.drain(0) == []


def test_missing_topic_is_a_usage_error(world: Fixture) -> None:
    with pytest.raises(UsageError, match="--topic"):
        run_seed(world.settings, SeedOptions(topic=f"absent-{world.unique}", seed_id="x"))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"mode": "everything"}, "mode"),
        ({"mode": None}, "mode"),
        ({"filter": 3}, "filter"),
        ({"startedAt": "yesterday"}, "startedAt"),
        ({"counts": {"seeded": "many"}}, "counts"),
        ({"retry": "q-1"}, "retry"),
        ({"phase": "Done"}, "phase"),
        ({"phase": 1}, "phase"),
    ],
)
def test_a_damaged_ledger_document_names_the_field(change: dict[str, Any], field: str) -> None:
    good = {
        "_id": "shop/seed",
        "mode": "latest",
        "filter": "{}",
        "startedAt": datetime(2026, 1, 1, tzinfo=UTC),
        "phase": "Running",
        "after": "q-1",
        "counts": {"seeded": 3},
        "retry": [],
    }
    assert Checkpoint.from_document(good).after == "q-1"
    with pytest.raises(LedgerError, match=f"field '{field}'"):
        Checkpoint.from_document({**good, **change})

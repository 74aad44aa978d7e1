"""Reading the publisher's status record and seed progress from a real Redis."""

from __future__ import annotations

import json

from liberator_operator.datastatus import connect, read_seed_progress, read_status
from liberator_publisher.core.contract import seed_key, status_key
from liberator_publisher.core.status import StatusRecord, write_status


def test_reads_the_record_the_publisher_writes(redis_url: str, unique: str) -> None:
    client = connect(redis_url)
    ident = f"shop/quotes-{unique}"
    assert read_status(client, ident) is None
    record = StatusRecord(
        pod="app-7",
        epoch=4,
        lastEventTime="2026-01-01T00:00:00Z",
        captureLagSeconds=0.5,
        relayLagSeconds=0.2,
        backlog=12,
        parked="",
        captureSince="2025-12-31T00:00:00.000Z",
        updatedAt="2026-01-01T00:00:01Z",
    )
    write_status(client, ident, record, ttl_seconds=30)
    data = read_status(client, ident)
    assert data is not None
    assert (
        data.leader,
        data.epoch,
        data.lag_seconds,
        data.backlog,
        data.parked_reason,
        data.last_event_time,
    ) == ("app-7", 4, 0.5, 12, None, "2026-01-01T00:00:00Z")
    assert data.capture_since == "2025-12-31T00:00:00.000Z"


def test_only_the_publishers_own_record_is_read(redis_url: str, unique: str) -> None:
    # The leader writes a JSON string of StatusRecord; a hash, or other spellings of its keys,
    # are not guessed at (a stray key must not read as a leader).
    client = connect(redis_url)
    ident = f"shop/hash-{unique}"
    client.hset(
        status_key(ident),
        mapping={"pod": "app-2", "epoch": "9", "parked": "ChangeStreamHistoryLost"},
    )
    assert read_status(client, ident) is None
    client.delete(status_key(ident))
    client.set(status_key(ident), json.dumps({"leader": "app-2", "lagSeconds": 3}))
    data = read_status(client, ident)
    assert data is not None and (data.leader, data.lag_seconds) == (None, None)


def test_garbled_record_reads_as_none(redis_url: str, unique: str) -> None:
    client = connect(redis_url)
    ident = f"shop/garbled-{unique}"
    client.set(status_key(ident), "{not json")
    assert read_status(client, ident) is None
    client.set(status_key(ident), json.dumps(["a", "list"]))
    assert read_status(client, ident) is None


def test_seed_progress(redis_url: str, unique: str) -> None:
    client = connect(redis_url)
    seed = f"shop/initial-{unique}"
    assert read_seed_progress(client, seed) is None
    client.hset(
        seed_key(seed),
        mapping={
            "phase": "Succeeded",
            "seeded": 5,
            "skipped": 1,
            "failed": 0,
            "total": 6,
            "completedAt": "2026-01-01T00:00:09Z",
        },
    )
    progress = read_seed_progress(client, seed)
    assert progress is not None
    assert (
        progress.phase,
        progress.seeded,
        progress.skipped,
        progress.total,
        progress.completed_at,
    ) == ("Succeeded", 5, 1, 6, "2026-01-01T00:00:09Z")

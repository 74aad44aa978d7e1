"""The Redis lease and fencing epoch, against the real redis-server of the local stack."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from liberator_publisher.core.contract import status_key
from liberator_publisher.core.status import StatusRecord, read_status, write_status
from liberator_publisher.sidecar.leader import Lease, epoch_key, lease_key


@pytest.fixture()
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as c:
        yield c


def test_one_holder_at_a_time_and_each_term_gets_a_larger_epoch(
    client: redis.Redis, unique: str
) -> None:
    a = Lease(client, f"ns/{unique}", "pod-a", ttl_seconds=5)
    b = Lease(client, f"ns/{unique}", "pod-b", ttl_seconds=5)
    first = a.try_acquire()
    assert first >= 1 and a.held
    assert b.try_acquire() == 0 and not b.held
    assert a.holder() == a.token
    a.release()
    assert not a.held and client.get(lease_key(f"ns/{unique}")) is None
    second = b.try_acquire()
    assert second > first
    assert int(client.get(epoch_key(f"ns/{unique}")) or 0) == second


def test_renewal_extends_only_the_holders_lease(client: redis.Redis, unique: str) -> None:
    a = Lease(client, f"ns/{unique}", "pod-a", ttl_seconds=60)
    b = Lease(client, f"ns/{unique}", "pod-b", ttl_seconds=60)
    assert a.try_acquire()
    client.pexpire(lease_key(f"ns/{unique}"), 10_000)  # run down on the server
    assert a.renew()
    assert client.pttl(lease_key(f"ns/{unique}")) > 30_000
    # b never held it: renewing must not extend (or create) anything.
    assert not b.renew()
    assert a.holder() == a.token


def test_expired_lease_goes_to_a_standby_and_the_old_holder_learns_it_lost(
    client: redis.Redis, unique: str
) -> None:
    a = Lease(client, f"ns/{unique}", "pod-a", ttl_seconds=0.3)
    b = Lease(client, f"ns/{unique}", "pod-b", ttl_seconds=5)
    epoch_a = a.try_acquire()
    deadline = time.monotonic() + 10
    epoch_b = 0
    while not epoch_b and time.monotonic() < deadline:
        epoch_b = b.try_acquire()
        time.sleep(0.05)
    assert epoch_b > epoch_a
    assert not a.held  # its local deadline passed with the TTL
    assert not a.renew()  # and the server agrees: b's token is there now
    assert a.epoch == 0 and b.holder() == b.token
    a.release()  # releasing a lease one no longer holds must not delete the holder's
    assert b.holder() == b.token


def test_local_deadline_never_outlives_the_server_expiry(client: redis.Redis, unique: str) -> None:
    a = Lease(client, f"ns/{unique}", "pod-a", ttl_seconds=3)
    assert a.try_acquire()
    server_ms = client.pttl(lease_key(f"ns/{unique}"))
    assert 0 < a.remaining() * 1000 <= server_ms + 50  # measured from before the command


def test_status_record_round_trips_and_expires(client: redis.Redis, unique: str) -> None:
    record = StatusRecord(
        pod="pod-a",
        epoch=3,
        lastEventTime=None,
        captureLagSeconds=0.5,
        relayLagSeconds=0.25,
        backlog=7,
        parked="",
        captureSince="2025-12-31T23:00:00.000Z",
        updatedAt="2026-01-01T00:00:00Z",
    )
    write_status(client, f"ns/{unique}", record, ttl_seconds=60)
    assert 0 < client.pttl(status_key(f"ns/{unique}")) <= 60_000
    stored = read_status(client, f"ns/{unique}")
    assert stored == {
        "pod": "pod-a",
        "epoch": 3,
        "lastEventTime": None,
        "captureLagSeconds": 0.5,
        "relayLagSeconds": 0.25,
        "backlog": 7,
        "parked": "",
        "captureSince": "2025-12-31T23:00:00.000Z",
        "updatedAt": "2026-01-01T00:00:00Z",
        "paused": False,
        "restart": None,
        "restartRejected": None,
        "stalled": None,
        "checkpoints": None,
        "resumePoint": None,
    }
    write_status(client, f"ns/{unique}", record, ttl_seconds=0.2)
    deadline = time.monotonic() + 10
    while read_status(client, f"ns/{unique}") is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert read_status(client, f"ns/{unique}") is None


def test_epoch_advances_above_a_floor_after_redis_lost_its_data(
    client: redis.Redis, unique: str
) -> None:
    a = Lease(client, f"ns/{unique}", "pod-a", ttl_seconds=5)
    assert a.try_acquire() == 1  # a fresh counter, as after a Redis restart without persistence
    assert a.advance_epoch(41) == 42 and a.epoch == 42
    assert a.advance_epoch(10) == 43  # never backwards
    b = Lease(client, f"ns/{unique}", "pod-b", ttl_seconds=5)
    assert b.advance_epoch(100) == 0  # only the holder may advance it
    assert int(client.get(epoch_key(f"ns/{unique}")) or 0) == 43

"""Fixtures for the publisher runtime tests; the helpers they hand out are in tests/support.

Everything talks to the real local servers of hack/liberator_stack; nothing here is a mock.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.database import Database

from liberator_stack import Server, Stack, mongo
from tests.support.publisher import Collector, Publisher, running_publisher


@pytest.fixture()
def publisher(  # noqa: PLR0917
    stack: Stack,
    mongo_uri: str,
    pubsub: Server,
    redis_url: str,
    unique: str,
    tmp_path: Path,
) -> Iterator[Publisher]:
    """A fresh publisher on the session's servers."""
    with running_publisher(mongo_uri, pubsub, redis_url, unique, tmp_path) as p:
        yield p


@pytest.fixture()
def collector(publisher: Publisher) -> Iterator[Collector]:
    c = Collector(publisher.topic)
    yield c
    c.close()


@pytest.fixture()
def db(publisher: Publisher, mongo_uri: str) -> Iterator[Database[dict[str, Any]]]:
    """The publisher's database, dropped at the end (test_capture and test_relay, which need
    no publisher, define their own)."""
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri, tz_aware=True)
    yield client[publisher.database]
    client.drop_database(publisher.database)
    client.close()


@pytest.fixture()
def bounded_mongo(
    request: pytest.FixtureRequest, tmp_path: Path, real_mongo_uri: str | None
) -> Iterator[Server]:
    """A stand-in of its own whose oplog keeps the test module's ``CAP`` entries."""
    if real_mongo_uri:
        pytest.skip("drives the local stand-in's oplog cap")
    server = mongo.start(tmp_path / "mongo", oplog_max_entries=int(request.module.CAP))
    yield server
    server.stop()


@pytest.fixture()
def bounded_publisher(
    bounded_mongo: Server, pubsub: Server, redis_url: str, unique: str, tmp_path: Path
) -> Iterator[Publisher]:
    """A fresh publisher on the bounded stand-in."""
    with running_publisher(
        bounded_mongo.exports["LIBERATOR_MONGO_URI"], pubsub, redis_url, unique, tmp_path
    ) as p:
        yield p

"""Fixtures for the stand-in's tests: a client of the session's MongoDB, a fresh collection."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pymongo
import pytest
from pymongo.collection import Collection

Doc = dict[str, Any]


@pytest.fixture()
def client(mongo_uri: str) -> Iterator[pymongo.MongoClient[Doc]]:
    with pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=20_000) as c:
        yield c


@pytest.fixture()
def coll(client: pymongo.MongoClient[Doc], unique: str) -> Collection[Doc]:
    # A fresh name per test: the emulator invalidates any resume on a collection once dropped.
    return client[f"stack_{unique}"]["entities"]

"""The MongoDB stand-in stores documents under record ids, as WiredTiger does.

The launcher (``hack/mongo/LiberatorMongo.java``, ``H2Store.Collection``) keys each document by a
record id that grows with each insert, and ``_id`` is an index like any other. What a client
can see of that is MongoDB's: ``$natural`` order is insertion order (not ``_id`` order), in both
directions; a later insert never takes a deleted document's place; after a restart new documents
still come after the old ones, and every ``_id`` is still found; ``collStats`` counts the
documents' BSON. With ``LIBERATOR_TEST_MONGO_URI`` the first test runs against that server,
which keeps it honest.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import bson
import pymongo
import pytest
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from liberator_stack import mongo
from liberator_stack.process import Server

Doc = dict[str, Any]


def _ids_in(coll: Collection[Doc], direction: int) -> list[Any]:
    return [d["_id"] for d in coll.find({}, {"_id": 1}).sort("$natural", direction)]


def test_natural_order_is_insertion_order_not_id_order(
    client: pymongo.MongoClient[Doc], unique: str
) -> None:
    coll = client[f"records_{unique}"]["outbox"]
    # Random ids, as the outbox's UUIDs are: their _id order is not their insertion order.
    ids = [str(uuid.uuid4()) for _ in range(50)]
    assert ids != sorted(ids)
    coll.insert_many([{"_id": i, "n": n} for n, i in enumerate(ids)])
    assert _ids_in(coll, 1) == ids
    assert _ids_in(coll, -1) == ids[::-1]
    # An update keeps a document in its place; a delete leaves no hole a later insert fills.
    coll.update_one({"_id": ids[3]}, {"$set": {"status": "published", "pad": "x" * 500}})
    coll.delete_one({"_id": ids[10]})
    coll.insert_one({"_id": "last"})
    expected = [i for i in ids if i != ids[10]] + ["last"]
    assert _ids_in(coll, 1) == expected
    assert [d["_id"] for d in coll.find({}, {"_id": 1})] == expected
    # Every _id is still found through its index.
    assert all(coll.find_one({"_id": i}, {"_id": 1}) for i in expected)
    assert coll.find_one({"_id": ids[10]}) is None
    assert coll.find_one({"_id": ids[3]})["status"] == "published"


def test_after_a_restart_new_documents_come_after_the_old(
    mongo_server: Server, tmp_path: Path
) -> None:
    server = mongo.start(tmp_path / "records")
    uri, port = server.exports["LIBERATOR_MONGO_URI"], int(server.details["port"])
    try:
        with pymongo.MongoClient(uri) as c:
            coll = c["restart"]["outbox"]
            coll.insert_many([{"_id": f"z{n}"} for n in range(5)])
            # The newest record goes: a restart continues after the largest record left, as
            # WiredTiger does, and the new documents still come after every old one.
            coll.delete_one({"_id": "z4"})
        server.stop()
        server = mongo.start(tmp_path / "records", port)
        with pymongo.MongoClient(uri) as c:
            coll = c["restart"]["outbox"]
            coll.insert_many([{"_id": "a1"}, {"_id": "a0"}])
            assert _ids_in(coll, 1) == ["z0", "z1", "z2", "z3", "a1", "a0"]
            assert coll.count_documents({}) == 6
            assert coll.find_one({"_id": "z2"}) == {"_id": "z2"}
            with pytest.raises(DuplicateKeyError):
                coll.insert_one({"_id": "z1"})
    finally:
        server.stop()


def test_collstats_size_is_the_sum_of_the_documents_bson(
    client: pymongo.MongoClient[Doc], unique: str
) -> None:
    db = client[f"records_{unique}"]
    coll = db["sized"]
    docs: list[Doc] = [{"_id": n, "body": "x" * n, "nested": {"n": n}} for n in range(30)]
    coll.insert_many(docs)
    coll.update_one({"_id": 3}, {"$set": {"body": "y" * 300}})
    coll.delete_one({"_id": 7})
    expected = sum(len(bson.encode(d)) for d in coll.find())
    stats = db.command("collStats", "sized")
    assert stats["count"] == 29
    assert stats["size"] == expected

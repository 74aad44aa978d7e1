"""Non-unique indexes in the MongoDB stand-in answer exactly as a scan does.

mongo-java-server keeps no non-unique index, so every query on such a field scanned the whole
collection under its lock (issue #10). The launcher (``hack/mongo/LiberatorMongo.java``,
``SecondaryIndex``) now keeps one, and serves a query or a leading ``$match`` with an equality on
its first key from it. These tests compare each answer with the one a twin collection without
the index gives, through inserts, updates that move a document between keys, replaces and
deletes, arrays, numbers of mixed types, nulls and missing fields; and they check that the index
is built over existing documents, survives a restart and a drop. On a real MongoDB
(``LIBERATOR_TEST_MONGO_URI``) the same answers hold, which keeps the comparison honest.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pymongo
from bson import Int64, ObjectId
from pymongo import ASCENDING, DESCENDING
from pymongo.collection import Collection

from liberator_stack import mongo
from liberator_stack.process import Server

Doc = dict[str, Any]

# Values an outbox-like field takes, and the odd ones a user's collection may hold.
VALUES: list[Any] = ["pending", "published", "failed", 1, 1.0, Int64(2), None, ["pending", "x"]]
QUERIES: list[Doc] = [
    {"status": "pending"},
    {"status": "published"},
    {"status": 1},
    {"status": 2.0},
    {"status": "x"},
    {"status": "absent"},
    {"status": None},
    {"status": {"$in": ["failed", 2]}},
    {"status": "pending", "seq": {"$gte": 50}},
    {"status": "pending", "key": {"$exists": True}},
    {"key": "k3", "status": {"$ne": "failed"}},
    {"key": "k3"},
    {"_id": 7, "status": "pending"},
    {"$or": [{"status": "failed"}, {"key": "k1"}]},
]


def twins(client: pymongo.MongoClient[Doc], unique: str) -> tuple[Collection[Doc], Collection[Doc]]:
    db = client[f"indexes_{unique}"]
    indexed, plain = db["indexed"], db["plain"]
    indexed.create_index([("status", ASCENDING), ("seq", ASCENDING)], name="by_status")
    # A compound multikey index: a document with two tags has two entries under its key.
    indexed.create_index([("key", ASCENDING), ("tags", DESCENDING)], name="by_key")
    return indexed, plain


def both(indexed: Collection[Doc], plain: Collection[Doc], op: str, *args: Any) -> None:
    for coll in (indexed, plain):
        getattr(coll, op)(*args)


def assert_same(indexed: Collection[Doc], plain: Collection[Doc]) -> None:
    for query in QUERIES:
        ids = sorted(d["_id"] for d in indexed.find(query, {"_id": 1}))
        assert ids == sorted(d["_id"] for d in plain.find(query, {"_id": 1})), query
        # count_documents: the index alone answers an equality on its first key (no document read)
        assert indexed.count_documents(query) == len(ids), query
        ordered = [d["_id"] for d in indexed.find(query).sort([("seq", -1), ("_id", 1)])]
        assert ordered == [d["_id"] for d in plain.find(query).sort([("seq", -1), ("_id", 1)])]
    pipeline: list[Doc] = [
        {"$match": {"status": "pending"}},
        {"$group": {"_id": "$key", "n": {"$sum": 1}}},
        {"$sort": {"_id": 1}},
    ]
    assert list(indexed.aggregate(pipeline)) == list(plain.aggregate(pipeline))
    for group in ({"_id": None, "total": {"$sum": 1}}, {"_id": "$key", "n": {"$sum": 1}}):
        for match in ({"status": "pending"}, {"key": "k2"}, {"status": "absent"}):
            counted = [{"$match": match}, {"$group": group}, {"$sort": {"_id": 1}}][:2]
            assert list(indexed.aggregate(counted)) == list(plain.aggregate(counted)), counted


def random_document(rng: random.Random, n: int) -> Doc:
    document: Doc = {"_id": n, "seq": n}
    if rng.random() < 0.9:  # some documents lack the field
        document["status"] = rng.choice(VALUES)
    if rng.random() < 0.8:
        document["key"] = f"k{rng.randrange(6)}"
    document["tags"] = rng.sample(["red", "green", "blue"], rng.randrange(3))
    return document


def test_queries_on_indexed_fields_answer_as_a_scan_does(
    client: pymongo.MongoClient[Doc], unique: str
) -> None:
    indexed, plain = twins(client, unique)
    rng = random.Random(10)
    both(indexed, plain, "insert_many", [random_document(rng, n) for n in range(120)])
    assert_same(indexed, plain)
    for step in range(300):
        n = rng.randrange(140)
        action = rng.random()
        if action < 0.45:  # what the relay does: move a document from one key to another
            change = {"$set": {"status": rng.choice(VALUES)}}
            both(indexed, plain, "update_one", {"_id": n}, change)
        elif action < 0.6:
            both(indexed, plain, "update_many", {"key": f"k{n % 6}"}, {"$inc": {"seq": 1}})
        elif action < 0.7:
            both(indexed, plain, "update_one", {"_id": n}, {"$unset": {"status": ""}})
        elif action < 0.8:
            both(indexed, plain, "replace_one", {"_id": n}, random_document(rng, n), True)
        elif action < 0.9:
            both(indexed, plain, "delete_one", {"_id": n})
        else:
            both(indexed, plain, "delete_many", {"status": rng.choice(VALUES[:3])})
        if step % 50 == 49:
            assert_same(indexed, plain)
    assert_same(indexed, plain)


def test_an_index_on_existing_documents_and_after_a_drop(
    client: pymongo.MongoClient[Doc], unique: str
) -> None:
    coll = client[f"indexes_{unique}"]["late"]
    coll.insert_many([{"_id": n, "status": ["a", "b"][n % 2], "at": ObjectId()} for n in range(40)])
    coll.create_index([("status", ASCENDING)], name="late_status")
    assert sorted(d["_id"] for d in coll.find({"status": "b"})) == list(range(1, 40, 2))
    index = next(i for i in coll.list_indexes() if i["name"] == "late_status")
    assert not index.get("unique", False)
    coll.drop_index("late_status")
    assert coll.count_documents({"status": "a"}) == 20
    # A collection dropped and made again starts with an empty index: no stale entries.
    coll.drop()
    coll.create_index([("status", ASCENDING)], name="late_status")
    coll.insert_one({"_id": "new", "status": "a"})
    assert [d["_id"] for d in coll.find({"status": "a"})] == ["new"]


def test_an_index_survives_a_restart(mongo_server: Server, tmp_path: Path) -> None:
    server = mongo.start(tmp_path / "indexed")
    uri, port = server.exports["LIBERATOR_MONGO_URI"], int(server.details["port"])
    try:
        with pymongo.MongoClient(uri) as client:
            coll = client["restart"]["outbox"]
            coll.create_index([("status", ASCENDING), ("at", ASCENDING)], name="pending")
            coll.insert_many([{"_id": n, "status": "pending", "at": n} for n in range(30)])
            coll.update_many({"_id": {"$lt": 10}}, {"$set": {"status": "published"}})
        server.stop()
        server = mongo.start(tmp_path / "indexed", port)
        with pymongo.MongoClient(uri) as client:
            coll = client["restart"]["outbox"]
            assert coll.count_documents({"status": "pending"}) == 20
            coll.update_many({"_id": {"$lt": 20}}, {"$set": {"status": "published"}})
            assert sorted(d["_id"] for d in coll.find({"status": "pending"})) == list(range(20, 30))
            assert coll.count_documents({"status": "published"}) == 20
    finally:
        server.stop()

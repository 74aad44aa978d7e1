"""Smoke tests of the local MongoDB (mongo-java-server under hack/mongo/LiberatorMongo.java).

They check the behaviour the data plane relies on, against the real local server (or a real
MongoDB when ``LIBERATOR_TEST_MONGO_URI`` is set). Where the emulator differs from MongoDB the
test says so; the full list is in docs/local-stack.md (MongoDB section).
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pymongo
import pytest
from bson import Binary, Decimal128, Timestamp
from bson.codec_options import CodecOptions
from pymongo.change_stream import CollectionChangeStream
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError, OperationFailure

from liberator_stack import Stack, mongo
from liberator_stack.process import Server, StackError
from tests.support.commands import run

Doc = dict[str, Any]
DEADLINE = 30.0  # generous: the machine is shared; a getMore alone takes about 0.1 s here


def take(stream: CollectionChangeStream[Doc], count: int) -> list[Doc]:
    """Poll until ``count`` events arrived; fail (not hang) after the deadline."""
    events: list[Doc] = []
    deadline = time.monotonic() + DEADLINE
    while len(events) < count and time.monotonic() < deadline:
        event = stream.try_next()
        if event is not None:
            events.append(event)
    assert len(events) == count, f"got {len(events)} of {count} events: {events}"
    return events


def quiet(stream: CollectionChangeStream[Doc], seconds: float = 1.0) -> list[Doc]:
    """Events that arrive within ``seconds`` (used to assert that none do)."""
    events: list[Doc] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        event = stream.try_next()
        if event is not None:
            events.append(event)
    return events


def kinds(events: list[Doc]) -> list[tuple[str, Any]]:
    return [(e["operationType"], e["documentKey"]["_id"]) for e in events]


def test_watch_sees_insert_update_delete_in_order(coll: Collection[Doc]) -> None:
    with coll.watch(full_document="updateLookup") as stream:
        coll.insert_one({"_id": "q1", "state": "draft", "n": {"a": 1}})
        inserted = take(stream, 1)[0]
        coll.update_one({"_id": "q1"}, {"$set": {"state": "purchased", "n.b": 2}})
        updated = take(stream, 1)[0]
        coll.delete_one({"_id": "q1"})
        deleted = take(stream, 1)[0]

    assert kinds([inserted, updated, deleted]) == [
        ("insert", "q1"),
        ("update", "q1"),
        ("delete", "q1"),
    ]
    assert inserted["fullDocument"] == {"_id": "q1", "state": "draft", "n": {"a": 1}}
    # updateLookup: the whole document after the change (the "fat event").
    assert updated["fullDocument"] == {"_id": "q1", "state": "purchased", "n": {"a": 1, "b": 2}}
    assert deleted.get("fullDocument") is None
    tokens = [e["_id"] for e in (inserted, updated, deleted)]
    assert all(isinstance(t, Mapping) and t.get("_data") for t in tokens)
    assert len({t["_data"] for t in tokens}) == 3
    times = [e["clusterTime"] for e in (inserted, updated, deleted)]
    assert all(isinstance(t, Timestamp) for t in times)
    assert times == sorted(times)
    assert inserted["ns"] == {"db": coll.database.name, "coll": coll.name}


def test_update_event_without_lookup_has_key_but_no_document(coll: Collection[Doc]) -> None:
    # The emulator's own event puts the update operators in documentKey and the $set fields in
    # fullDocument; our launcher repairs both to MongoDB's shape.
    with coll.watch() as stream:
        coll.insert_one({"_id": 7, "v": 1})
        coll.update_one({"_id": 7}, {"$inc": {"v": 1}})
        events = take(stream, 2)
    assert events[1]["operationType"] == "update"
    assert events[1]["documentKey"] == {"_id": 7}
    assert events[1].get("fullDocument") is None


def test_update_lookup_of_a_deleted_document_is_null(coll: Collection[Doc]) -> None:
    with coll.watch(full_document="updateLookup") as stream:
        coll.insert_one({"_id": "gone", "v": 1})
        coll.update_one({"_id": "gone"}, {"$set": {"v": 2}})
        coll.delete_one({"_id": "gone"})
        events = take(stream, 3)
    # The lookup runs when the event is read, after the delete: MongoDB gives null, and so do we
    # (the bare emulator gives the update's $set fields instead).
    assert kinds(events)[1] == ("update", "gone")
    assert events[1]["fullDocument"] is None


def test_replace_and_find_and_modify_produce_events(coll: Collection[Doc]) -> None:
    with coll.watch(full_document="updateLookup") as stream:
        coll.insert_one({"_id": 1, "v": 1})
        coll.replace_one({"_id": 1}, {"v": 2})
        coll.find_one_and_update({"_id": 1}, {"$inc": {"v": 1}})
        coll.find_one_and_update({"_id": 2}, {"$set": {"v": 1}}, upsert=True)
        coll.find_one_and_delete({"_id": 1})
        events = take(stream, 5)
    assert kinds(events) == [
        ("insert", 1),
        ("replace", 1),
        ("update", 1),
        ("insert", 2),
        ("delete", 1),
    ]
    assert events[1]["fullDocument"] == {"_id": 1, "v": 2}
    assert events[3]["fullDocument"] == {"_id": 2, "v": 1}


@pytest.fixture()
def dotted(client: pymongo.MongoClient[Doc], unique: str) -> Collection[Doc]:
    """A collection whose name has a dot, like the publisher's default outbox ``<coll>.outbox``."""
    return client[f"smoke_{unique}"]["quotes.outbox"]


def test_update_lookup_on_a_collection_name_with_a_dot(dotted: Collection[Doc]) -> None:
    # The bare emulator splits "db.quotes.outbox" at the last dot and fails the whole getMore
    # with "Collection [db.quotes] not found"; the database name ends at the first dot.
    with dotted.watch(full_document="updateLookup") as stream:
        dotted.insert_one({"_id": "e1", "state": "draft", "n": 0})
        dotted.update_one({"_id": "e1"}, {"$set": {"state": "published"}, "$inc": {"n": 1}})
        events = take(stream, 2)
    assert kinds(events) == [("insert", "e1"), ("update", "e1")]
    assert events[1]["fullDocument"] == {"_id": "e1", "state": "published", "n": 1}
    assert events[1]["ns"] == {"db": dotted.database.name, "coll": "quotes.outbox"}


def test_insert_replace_delete_on_a_collection_name_with_a_dot(dotted: Collection[Doc]) -> None:
    prefix = dotted.database["quotes"]  # "db.quotes" must not be mistaken for "db.quotes.outbox"
    with dotted.watch(full_document="updateLookup") as stream:
        prefix.insert_one({"_id": "other"})
        dotted.insert_one({"_id": 1, "v": 1})
        dotted.replace_one({"_id": 1}, {"v": 2})
        dotted.update_one({"_id": 1}, {"$set": {"w": 3}})
        dotted.delete_one({"_id": 1})
        prefix.update_one({"_id": "other"}, {"$set": {"v": 1}})
        events = take(stream, 4)
        assert quiet(stream) == []
    assert kinds(events) == [("insert", 1), ("replace", 1), ("update", 1), ("delete", 1)]
    assert events[0]["fullDocument"] == {"_id": 1, "v": 1}
    assert events[1]["fullDocument"] == {"_id": 1, "v": 2}
    # Read after the delete: the lookup finds nothing, so null (as MongoDB).
    assert events[2]["fullDocument"] is None
    assert events[3].get("fullDocument") is None
    assert all(e["ns"] == {"db": dotted.database.name, "coll": "quotes.outbox"} for e in events)
    assert list(dotted.find()) == []
    assert prefix.find_one({"_id": "other"}) == {"_id": "other", "v": 1}


def test_update_lookup_runs_before_a_match_stage(dotted: Collection[Doc]) -> None:
    # The $match sees the looked-up document, so an update that does not touch "state" still
    # matches on it (the launcher puts its lookup first in the pipeline).
    pipeline = [{"$match": {"fullDocument.state": "published"}}]
    with dotted.watch(pipeline, full_document="updateLookup") as stream:
        dotted.insert_one({"_id": "d", "state": "draft"})
        dotted.insert_one({"_id": "p", "state": "published", "n": 0})
        dotted.update_one({"_id": "p"}, {"$inc": {"n": 1}})
        dotted.update_one({"_id": "d"}, {"$inc": {"n": 1}})
        events = take(stream, 2)
        assert quiet(stream) == []
    assert kinds(events) == [("insert", "p"), ("update", "p")]
    assert events[1]["fullDocument"] == {"_id": "p", "state": "published", "n": 1}


def test_update_on_a_collection_name_with_a_dot_without_lookup(dotted: Collection[Doc]) -> None:
    with dotted.watch() as stream:
        dotted.insert_one({"_id": 1, "v": 1})
        dotted.update_one({"_id": 1}, {"$set": {"v": 2}})
        events = take(stream, 2)
    assert kinds(events) == [("insert", 1), ("update", 1)]
    assert events[1].get("fullDocument") is None


def test_a_no_op_update_writes_no_event_and_no_oplog_entry(
    client: pymongo.MongoClient[Doc], dotted: Collection[Doc]
) -> None:
    """Setting a field to the value it has changes nothing: MongoDB logs nothing, nor do we.

    Not a lost event: a reader waiting for an event after such an update waits forever.
    """
    namespace = f"{dotted.database.name}.{dotted.name}"
    with dotted.watch(full_document="updateLookup") as stream:
        dotted.insert_one({"_id": "q", "n": 0})
        same = dotted.update_one({"_id": "q"}, {"$set": {"n": 0}})
        assert (same.matched_count, same.modified_count) == (1, 0)
        assert dotted.find_one_and_update({"_id": "q"}, {"$set": {"n": 0}}) == {"_id": "q", "n": 0}
        # A real change after the no-ops: the stream must give it right after the insert.
        dotted.update_one({"_id": "q"}, {"$set": {"n": 1}})
        events = take(stream, 2)
        assert quiet(stream) == []
    assert kinds(events) == [("insert", "q"), ("update", "q")]
    assert events[1]["fullDocument"] == {"_id": "q", "n": 1}
    # The emulator's oplog collection has no natural order (H2): order by timestamp.
    entries = sorted(client["local"]["oplog.rs"].find({"ns": namespace}), key=lambda e: e["ts"])
    assert [e["op"] for e in entries] == ["i", "u"]


def test_resume_after_a_token_sees_exactly_the_later_events(coll: Collection[Doc]) -> None:
    with coll.watch() as stream:
        coll.insert_many([{"_id": i} for i in range(5)])
        first = take(stream, 5)
    token = first[1]["_id"]

    with coll.watch(resume_after=token) as resumed:
        again = take(resumed, 3)
        assert quiet(resumed) == []
    assert [e["_id"] for e in again] == [e["_id"] for e in first[2:]]

    with coll.watch(start_after=token) as started:
        assert [e["documentKey"]["_id"] for e in take(started, 3)] == [2, 3, 4]


def test_start_at_operation_time_is_inclusive(coll: Collection[Doc]) -> None:
    with coll.watch() as stream:
        coll.insert_many([{"_id": i} for i in range(3)])
        events = take(stream, 3)
    with coll.watch(start_at_operation_time=events[1]["clusterTime"]) as stream:
        assert [e["documentKey"]["_id"] for e in take(stream, 2)] == [1, 2]


def test_match_pipeline_and_batching_options(coll: Collection[Doc]) -> None:
    pipeline = [{"$match": {"operationType": {"$in": ["insert", "delete"]}}}]
    with coll.watch(pipeline, batch_size=2, max_await_time_ms=200) as stream:
        coll.insert_one({"_id": "a"})
        coll.update_one({"_id": "a"}, {"$set": {"x": 1}})
        coll.delete_one({"_id": "a"})
        assert kinds(take(stream, 2)) == [("insert", "a"), ("delete", "a")]
        assert quiet(stream, 0.5) == []


def test_collection_stream_ignores_other_collections(coll: Collection[Doc]) -> None:
    other = coll.database["other"]
    with coll.watch() as stream:
        other.insert_one({"_id": "elsewhere"})
        coll.insert_one({"_id": "here"})
        assert kinds(take(stream, 1)) == [("insert", "here")]


def test_quiet_stream_returns_none_with_a_post_batch_token(coll: Collection[Doc]) -> None:
    # MongoDB 4.0.7+: every reply carries postBatchResumeToken, so a quiet stream has a token to
    # save (tests/test_stack/test_mongo_fidelity.py checks that it moves).
    coll.insert_one({"_id": "before"})
    with coll.watch(max_await_time_ms=100) as stream:
        assert stream.try_next() is None
        assert stream.resume_token is not None


def test_a_token_the_server_rejects(coll: Collection[Doc], real_mongo_uri: str | None) -> None:
    """The publisher's "lost resume point" case: the server refuses the saved token."""
    coll.insert_one({"_id": "x"})
    with pytest.raises(OperationFailure) as caught:
        coll.watch(resume_after={"_data": "not-a-token"}).try_next()
    if not real_mongo_uri:
        # Emulator: no error code, message "Unknown error: For input string: ...". MongoDB says
        # code 9 (FailedToParse) or 260 (InvalidResumeToken). A trimmed resume point gives 286
        # on both (test_mongo_fidelity.py).
        assert caught.value.code is None
        assert "not-a-token" in str(caught.value)


def test_duplicate_id_is_error_11000_and_unordered_insert_goes_on(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": "dup", "v": 1})
    with pytest.raises(DuplicateKeyError) as caught:
        coll.insert_one({"_id": "dup", "v": 2})
    assert caught.value.code == 11000
    assert coll.find_one({"_id": "dup"}) == {"_id": "dup", "v": 1}

    with pytest.raises(pymongo.errors.BulkWriteError) as bulk:
        coll.insert_many([{"_id": "dup"}, {"_id": "new1"}, {"_id": "new2"}], ordered=False)
    errors = bulk.value.details["writeErrors"]
    assert [(e["index"], e["code"]) for e in errors] == [(0, 11000)]
    assert sorted(d["_id"] for d in coll.find()) == ["dup", "new1", "new2"]
    assert bulk.value.details["nInserted"] == 2  # as MongoDB (the bare emulator said 3)


def test_unique_secondary_index(coll: Collection[Doc]) -> None:
    coll.create_index("email", unique=True)
    coll.insert_one({"_id": 1, "email": "a@example.com"})
    with pytest.raises(DuplicateKeyError) as caught:
        coll.insert_one({"_id": 2, "email": "a@example.com"})
    assert caught.value.code == 11000
    assert coll.count_documents({}) == 1


def test_crud_used_by_the_data_plane(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": "n", "a": {"b": {"c": 1}}, "status": "pending"})
    result = coll.update_one({"_id": "n"}, {"$set": {"a.b.c": 2, "a.d": 3}})
    assert (result.matched_count, result.modified_count) == (1, 1)
    after = coll.find_one_and_update(
        {"_id": "n", "status": "pending"},
        {"$set": {"status": "published"}},
        return_document=pymongo.ReturnDocument.AFTER,
    )
    assert after == {"_id": "n", "a": {"b": {"c": 2}, "d": 3}, "status": "published"}
    assert (
        coll.find_one_and_update({"_id": "n", "status": "pending"}, {"$set": {"status": "x"}})
        is None
    )
    bulk = coll.bulk_write(
        [
            pymongo.InsertOne({"_id": "b"}),
            pymongo.UpdateOne({"_id": "b"}, {"$set": {"q": 1}}),
            pymongo.ReplaceOne({"_id": "n"}, {"replaced": True}),
            pymongo.DeleteOne({"_id": "b"}),
        ]
    )
    assert (bulk.inserted_count, bulk.modified_count, bulk.deleted_count) == (1, 2, 1)
    assert list(coll.find()) == [{"_id": "n", "replaced": True}]


def test_bson_types_round_trip_through_storage_and_events(coll: Collection[Doc]) -> None:
    when = datetime.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=datetime.UTC)
    doc: Doc = {
        "_id": "types",
        "dec": Decimal128("12345.678901234567890"),
        "bin": b"\x00\xff",
        "uuid": Binary(b"0123456789abcdef", 4),
        "when": when,
        "nan": math.nan,
        "inf": math.inf,
        "big": 2**62,
        "arr": [1, "a", None],
        "nested": {"x": {"y": [{"z": 1}]}},
    }
    # Emulator gap: a Binary of subtype 5 (MD5) makes it drop the connection ("Unknown subtype").
    aware = coll.with_options(codec_options=CodecOptions(tz_aware=True))
    with aware.watch() as stream:
        coll.insert_one(doc)
        event = take(stream, 1)[0]
    stored = aware.find_one({"_id": "types"})
    for got in (stored, event["fullDocument"]):
        assert got is not None
        assert math.isnan(got.pop("nan"))
        assert got == {k: v for k, v in doc.items() if k != "nan"}


def test_resume_token_survives_a_restart(stack: Stack, mongo_server: Server, unique: str) -> None:
    """The H2 file keeps data and oplog: a saved token resumes on the restarted server."""
    uri = mongo_server.exports["LIBERATOR_MONGO_URI"]
    name = f"restart_{unique}"
    with pymongo.MongoClient(uri) as client:
        coll = client[name]["entities"]
        with coll.watch(full_document="updateLookup") as stream:
            coll.insert_many([{"_id": 1}, {"_id": 2}])
            coll.update_one({"_id": 1}, {"$set": {"v": 1}})
            before = take(stream, 3)
    token = before[0]["_id"]

    restarted = stack.restart("mongo")
    assert restarted.exports["LIBERATOR_MONGO_URI"] == uri

    with pymongo.MongoClient(uri, serverSelectionTimeoutMS=20_000) as client:
        coll = client[name]["entities"]
        assert list(coll.find().sort("_id")) == [{"_id": 1, "v": 1}, {"_id": 2}]
        coll.insert_one({"_id": 3})
        with coll.watch(resume_after=token, full_document="updateLookup") as stream:
            after = take(stream, 3)
            assert quiet(stream) == []
    assert [e["_id"] for e in after[:2]] == [e["_id"] for e in before[1:]]
    assert kinds(after) == [("insert", 2), ("update", 1), ("insert", 3)]
    # Positions keep growing across the restart (timestamps lead with seconds).
    assert after[2]["clusterTime"] > before[2]["clusterTime"]


def test_start_on_a_busy_port_fails_with_a_clear_error(
    mongo_server: Server, tmp_path: Path
) -> None:
    busy = int(mongo_server.details["port"])
    with pytest.raises(StackError) as caught:
        second = mongo.start(tmp_path / "second", busy)
        second.stop()  # reached only when the test fails: leave no stray server behind
    assert f"cannot listen on 127.0.0.1:{busy}" in str(caught.value)
    assert mongo_server.alive()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["127.0.0.1", "27017", "postgres"],
            "backend must be 'memory' or 'h2:<file>', got 'postgres'",
        ),
        (["127.0.0.1", "port", "memory"], "PORT must be a number, got 'port'"),
        (["127.0.0.1"], "usage: LiberatorMongo HOST PORT memory|h2:FILE"),
    ],
)
def test_launcher_rejects_bad_arguments(
    mongo_server: Server, args: list[str], message: str
) -> None:
    result = run(mongo.launcher_argv(*args))
    assert result.returncode == 2
    assert message in result.stderr

"""The MongoDB stand-in behaves as MongoDB documents it (issue #13, section 2).

Each test pins one documented MongoDB behaviour that bare mongo-java-server lacked and our
launcher (hack/mongo/LiberatorMongo.java) now provides. They run against the local stand-in, or a
real replica set when ``LIBERATOR_TEST_MONGO_URI`` is set (the tests that start their own bounded
server need the stand-in).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
from bson import Timestamp
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from liberator_stack import mongo
from liberator_stack.process import Server, StackError
from tests.support.commands import run
from tests.test_stack.test_mongo import kinds, quiet, take

Doc = dict[str, Any]


def fenced(stream: Any, coll: Collection[Doc]) -> list[Doc]:
    """Every event before a fence insert: what the stream gave for the writes made so far."""
    coll.insert_one({"_id": "fence"})
    events: list[Doc] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        event = stream.try_next()
        if event is None:
            continue
        if event.get("documentKey") == {"_id": "fence"}:
            return events
        events.append(event)
    raise AssertionError(f"no fence event within 30 s; got {events}")


# -- 1. No phantom change events ------------------------------------------------------------


def test_a_failed_insert_writes_no_change_event(coll: Collection[Doc]) -> None:
    # MongoDB: a failed insert writes no oplog entry, so no change event.
    coll.insert_one({"_id": "dup", "v": 1})
    with coll.watch() as stream:
        with pytest.raises(DuplicateKeyError):
            coll.insert_one({"_id": "dup", "v": 2})
        assert fenced(stream, coll) == []


def test_an_ordered_insert_many_logs_only_what_it_stored(coll: Collection[Doc]) -> None:
    # MongoDB: an ordered insert stops at its first error; later documents are neither stored
    # nor logged. nInserted counts the stored ones.
    coll.insert_one({"_id": "dup"})
    with coll.watch() as stream:
        with pytest.raises(BulkWriteError) as caught:
            coll.insert_many([{"_id": "a"}, {"_id": "dup"}, {"_id": "c"}])
        events = fenced(stream, coll)
    assert caught.value.details["nInserted"] == 1
    assert [(e["index"], e["code"]) for e in caught.value.details["writeErrors"]] == [(1, 11000)]
    assert kinds(events) == [("insert", "a")]
    assert coll.find_one({"_id": "c"}) is None


def test_an_unordered_insert_many_logs_each_stored_document(coll: Collection[Doc]) -> None:
    # MongoDB: an unordered insert goes on past errors; events (and nInserted) for the stored.
    coll.insert_one({"_id": "dup"})
    with coll.watch() as stream:
        with pytest.raises(BulkWriteError) as caught:
            coll.insert_many(
                [{"_id": "n1"}, {"_id": "dup"}, {"_id": "n2"}, {"_id": "dup"}], ordered=False
            )
        events = fenced(stream, coll)
    assert caught.value.details["nInserted"] == 2
    assert [e["index"] for e in caught.value.details["writeErrors"]] == [1, 3]
    assert kinds(events) == [("insert", "n1"), ("insert", "n2")]


def test_a_successful_insert_many_reports_every_document(coll: Collection[Doc]) -> None:
    result = coll.insert_many([{"_id": i} for i in range(3)])
    assert result.inserted_ids == [0, 1, 2]
    assert coll.count_documents({}) == 3


# -- 2. hello ---------------------------------------------------------------------------------


def test_hello_answers_like_a_writable_primary(
    client: pymongo.MongoClient[Doc], coll: Collection[Doc]
) -> None:
    # MongoDB 4.4.2+: `hello` replaces isMaster; a primary says isWritablePrimary.
    reply = client.admin.command("hello")
    assert reply["isWritablePrimary"] is True
    assert "ismaster" not in reply
    assert reply["maxWireVersion"] >= 13
    assert reply["maxBsonObjectSize"] == 16 * 1024 * 1024
    assert reply["maxWriteBatchSize"] > 0 and reply["maxMessageSizeBytes"] > 0
    # A replica set member's replies carry operationTime and the gossiped $clusterTime.
    assert isinstance(reply["operationTime"], Timestamp)
    assert isinstance(reply["$clusterTime"]["clusterTime"], Timestamp)
    coll.insert_one({"_id": "later"})
    later = client.admin.command("hello")
    assert later["operationTime"] > reply["operationTime"]
    # The database a driver sends it to does not matter.
    assert coll.database.command("hello")["isWritablePrimary"] is True


def test_is_master_carries_operation_time_and_hello_ok(client: pymongo.MongoClient[Doc]) -> None:
    # MongoDB: isMaster with helloOk answers helloOk: true (the driver then uses hello).
    reply = client.admin.command("isMaster", helloOk=True)
    assert reply["ismaster"] is True
    assert reply["helloOk"] is True
    assert isinstance(reply["operationTime"], Timestamp)


def test_every_reply_carries_the_operation_time(
    client: pymongo.MongoClient[Doc], coll: Collection[Doc]
) -> None:
    # MongoDB: a replica set member's replies carry operationTime, the optime of the last
    # operation (a write's own). The publisher records its origin from a ping's.
    with coll.watch() as stream:
        before = client.admin.command("ping")["operationTime"]
        written = coll.database.command("insert", coll.name, documents=[{"_id": "w"}])
        event = take(stream, 1)[0]
    assert written["n"] == 1
    assert before < written["operationTime"] == event["clusterTime"]
    assert client.admin.command("ping")["operationTime"] >= written["operationTime"]


# -- 3. Client stages see MongoDB-shaped events ------------------------------------------------


def test_a_match_on_ns_coll_sees_every_event(coll: Collection[Doc]) -> None:
    # MongoDB: stages after $changeStream see the event as the client gets it, with `ns`.
    with coll.watch([{"$match": {"ns.coll": coll.name}}]) as stream:
        coll.insert_one({"_id": 1, "v": 1})
        coll.update_one({"_id": 1}, {"$set": {"v": 2}})
        coll.delete_one({"_id": 1})
        assert kinds(take(stream, 3)) == [("insert", 1), ("update", 1), ("delete", 1)]
    with coll.watch([{"$match": {"ns.coll": "elsewhere"}}]) as stream:
        coll.insert_one({"_id": 2})
        assert quiet(stream) == []


def test_a_match_on_operation_type_sees_updates_and_replacements(coll: Collection[Doc]) -> None:
    # MongoDB: a replacement is operationType "replace", an update "update", already in $match.
    with coll.watch([{"$match": {"operationType": {"$in": ["update", "replace"]}}}]) as stream:
        coll.insert_one({"_id": 1, "v": 1})
        coll.update_one({"_id": 1}, {"$inc": {"v": 1}})
        coll.replace_one({"_id": 1}, {"w": 1})
        coll.delete_one({"_id": 1})
        events = take(stream, 2)
        assert quiet(stream, 0.5) == []
    assert kinds(events) == [("update", 1), ("replace", 1)]


def test_a_match_on_document_key_and_update_description(coll: Collection[Doc]) -> None:
    # MongoDB: documentKey is {_id} for updates too; updateDescription names the fields.
    pipeline = [
        {"$match": {"documentKey._id": "k", "updateDescription.updatedFields.state": "paid"}}
    ]
    with coll.watch(pipeline) as stream:
        coll.insert_many([{"_id": "k", "state": "new"}, {"_id": "other", "state": "new"}])
        coll.update_one({"_id": "other"}, {"$set": {"state": "paid"}})
        coll.update_one({"_id": "k"}, {"$set": {"note": "x"}})
        coll.update_one({"_id": "k"}, {"$set": {"state": "paid"}, "$unset": {"note": ""}})
        [event] = take(stream, 1)
        assert quiet(stream, 0.5) == []
    assert event["documentKey"] == {"_id": "k"}
    assert event["updateDescription"]["updatedFields"] == {"state": "paid"}
    assert event["updateDescription"]["removedFields"] == ["note"]


def test_a_project_stage_shapes_the_event(coll: Collection[Doc]) -> None:
    pipeline = [{"$project": {"operationType": 1, "ns": 1, "documentKey": 1}}]
    with coll.watch(pipeline) as stream:
        coll.insert_one({"_id": "p", "big": "x" * 100})
        [event] = take(stream, 1)
    assert set(event) == {"_id", "operationType", "ns", "documentKey"}
    assert event["ns"] == {"db": coll.database.name, "coll": coll.name}


def test_update_description_of_nested_and_removed_fields(coll: Collection[Doc]) -> None:
    with coll.watch() as stream:
        coll.insert_one({"_id": 1, "a": {"b": 1}, "n": 1, "gone": True})
        coll.update_one({"_id": 1}, {"$set": {"a.b": 2}, "$inc": {"n": 5}, "$unset": {"gone": ""}})
        update = take(stream, 2)[1]
    assert update["updateDescription"] == {
        "updatedFields": {"a.b": 2, "n": 6},
        "removedFields": ["gone"],
        "truncatedArrays": [],
    }
    assert "fullDocument" not in update


# -- 3b. Client stages evaluate as MongoDB's matcher does ------------------------------------

CRUD = ["insert", "update", "replace", "delete"]


def crud(coll: Collection[Doc], key: Any) -> None:
    """One insert, update, replace and delete of ``key``."""
    coll.insert_one({"_id": key, "x": 1, "a": {"b": 2}, "tags": ["t1", "t2"]})
    coll.update_one({"_id": key}, {"$set": {"x": 2}})
    coll.replace_one({"_id": key}, {"x": 3, "a": {"b": 2}})
    coll.delete_one({"_id": key})


def matched(coll: Collection[Doc], pipeline: list[Doc], count: int, **kwargs: Any) -> list[Doc]:
    """The events of one crud() round that pass ``pipeline``, exactly ``count`` of them."""
    with coll.watch(pipeline, **kwargs) as stream:
        crud(coll, "k")
        events = take(stream, count) if count else []
        assert quiet(stream, 0.5) == []
    return events


def test_a_match_on_ns_in_namespace_documents(coll: Collection[Doc]) -> None:
    # MongoDB: `ns` is a sub-document; $in and equality compare it as a whole, field order
    # included. Debezium's collection.include.list (literal mode) adds exactly this $match.
    ns = {"db": coll.database.name, "coll": coll.name}
    debezium = [
        {
            "$match": {
                "$and": [
                    {"ns": {"$in": [{"db": coll.database.name, "coll": "other"}, ns]}},
                    {"operationType": {"$in": CRUD}},
                ]
            }
        }
    ]
    assert kinds(matched(coll, debezium, 4)) == [(op, "k") for op in CRUD]
    assert len(matched(coll, [{"$match": {"ns": ns}}], 4)) == 4
    assert (
        len(matched(coll, [{"$match": {"$or": [{"ns": {"db": "x", "coll": "y"}}, {"ns": ns}]}}], 4))
        == 4
    )
    # Another collection, the other field order, or $nin of its own namespace: nothing.
    matched(coll, [{"$match": {"ns": {"$in": [{"db": coll.database.name, "coll": "other"}]}}}], 0)
    matched(coll, [{"$match": {"ns": {"coll": coll.name, "db": coll.database.name}}}], 0)
    matched(coll, [{"$match": {"ns": {"$nin": [ns]}}}], 0)


def test_debeziums_regex_pipeline_sees_every_event(coll: Collection[Doc]) -> None:
    # Debezium's default (regex) filters wrap the event, match on a computed namespace, and
    # restore the event, resume token included.
    namespace = f"{coll.database.name}.{coll.name}"
    pipeline = [
        {
            "$replaceRoot": {
                "newRoot": {
                    "namespace": {"$concat": ["$ns.db", ".", "$ns.coll"]},
                    "event": "$$ROOT",
                }
            }
        },
        {
            "$match": {
                "$and": [
                    {"namespace": {"$regex": f"^({namespace})$", "$options": "i"}},
                    {"event.operationType": {"$in": CRUD}},
                ]
            }
        },
        {"$replaceRoot": {"newRoot": "$event"}},
    ]
    events = matched(coll, pipeline, 4)
    assert kinds(events) == [(op, "k") for op in CRUD]
    assert events[0]["ns"] == {"db": coll.database.name, "coll": coll.name}
    assert all(isinstance(e["_id"], dict) and "_data" in e["_id"] for e in events)


def test_a_match_on_operation_type_document_key_and_full_document(coll: Collection[Doc]) -> None:
    assert kinds(
        matched(coll, [{"$match": {"operationType": {"$nin": ["delete", "insert"]}}}], 2)
    ) == [("update", "k"), ("replace", "k")]
    assert len(matched(coll, [{"$match": {"documentKey._id": {"$in": ["nope", "k"]}}}], 4)) == 4
    assert len(matched(coll, [{"$match": {"documentKey": {"_id": "k"}}}], 4)) == 4
    matched(coll, [{"$match": {"documentKey._id": {"$in": ["nope"]}}}], 0)
    # fullDocument: inserts and replacements carry it (updates too, looked up when read:
    # gone by then here, so null); numbers compare by value, arrays by element.
    assert kinds(matched(coll, [{"$match": {"fullDocument.x": {"$in": [1, 3.0]}}}], 2)) == [
        ("insert", "k"),
        ("replace", "k"),
    ]
    assert kinds(matched(coll, [{"$match": {"fullDocument.a": {"b": 2.0}}}], 2)) == [
        ("insert", "k"),
        ("replace", "k"),
    ]
    assert kinds(matched(coll, [{"$match": {"fullDocument.tags": {"$in": ["zz", "t2"]}}}], 1)) == [
        ("insert", "k")
    ]
    assert kinds(
        matched(coll, [{"$match": {"fullDocument": None}}], 2, full_document="updateLookup")
    ) == [("update", "k"), ("delete", "k")]


def test_set_unset_and_replace_with_stages(coll: Collection[Doc]) -> None:
    # MongoDB 4.2+: $set aliases $addFields, $replaceWith aliases $replaceRoot; both, and
    # $unset, are allowed in a change stream pipeline.
    [event] = matched(
        coll,
        [
            {"$match": {"operationType": "insert"}},
            {"$set": {"key": "$documentKey._id"}},
            {"$unset": ["fullDocument", "clusterTime"]},
        ],
        1,
    )
    assert event["key"] == "k"
    assert "fullDocument" not in event and "clusterTime" not in event
    [event] = matched(
        coll,
        [
            {"$match": {"operationType": "delete"}},
            {"$replaceWith": {"_id": "$_id", "gone": "$documentKey._id"}},
        ],
        1,
    )
    assert set(event) == {"_id", "gone"} and event["gone"] == "k"


# -- listCollections applies its filter -------------------------------------------------------


def test_list_collections_applies_its_filter(client: pymongo.MongoClient[Doc], unique: str) -> None:
    # MongoDB: the filter is a query on each entry (name, type, options, info).
    db = client[f"listing_{unique}"]
    for name in ("quotes", "quotes.outbox", "other"):
        db.create_collection(name)
    assert db.list_collection_names(filter={"name": "quotes"}) == ["quotes"]
    assert db.list_collection_names(filter={"name": "missing"}) == []
    assert sorted(
        db.list_collection_names(filter={"name": {"$in": ["quotes", "other", "missing"]}})
    ) == ["other", "quotes"]
    assert sorted(db.list_collection_names(filter={"name": {"$regex": "^quotes"}})) == [
        "quotes",
        "quotes.outbox",
    ]
    assert sorted(db.list_collection_names(filter={"type": "collection"})) == [
        "other",
        "quotes",
        "quotes.outbox",
    ]
    assert db.list_collection_names(filter={"type": "view"}) == []
    [entry] = db.list_collections(filter={"name": "quotes.outbox"})
    assert entry["name"] == "quotes.outbox" and entry["type"] == "collection"
    assert "options" in entry
    # nameOnly: name and type only.
    reply = db.command("listCollections", nameOnly=True, filter={"name": "other"})
    assert reply["cursor"]["firstBatch"] == [{"name": "other", "type": "collection"}]


def test_list_collections_refuses_a_filter_that_is_not_a_document(
    client: pymongo.MongoClient[Doc], unique: str
) -> None:
    with pytest.raises(OperationFailure) as caught:
        client[f"listing_{unique}"].command("listCollections", filter="quotes")
    assert caught.value.code == 14
    assert (
        "BSON field 'listCollections.filter' is the wrong type 'string', expected type 'object'"
    ) in str(caught.value)


# -- 5. Post-batch resume tokens --------------------------------------------------------------


def test_an_empty_batch_carries_a_post_batch_token_that_moves(coll: Collection[Doc]) -> None:
    # MongoDB 4.0.7+: every aggregate/getMore reply's cursor has postBatchResumeToken, the
    # position of the latest oplog entry scanned, even when no event matched.
    other = coll.database["other"]
    with coll.watch(max_await_time_ms=100) as stream:
        opened = stream.resume_token
        assert opened is not None  # from the aggregate's empty first batch
        assert stream.try_next() is None
        other.insert_many([{"_id": i} for i in range(3)])  # not this stream's
        deadline = time.monotonic() + 30
        while stream.resume_token == opened and time.monotonic() < deadline:
            assert stream.try_next() is None
        moved = stream.resume_token
    assert moved is not None and moved != opened
    # The moved token is a real position: resuming from it gives exactly the later events.
    coll.insert_one({"_id": "after"})
    with coll.watch(resume_after=moved) as resumed:
        assert kinds(take(resumed, 1)) == [("insert", "after")]
        assert quiet(resumed, 0.5) == []


def test_the_token_after_a_batch_is_the_last_event(coll: Collection[Doc]) -> None:
    with coll.watch() as stream:
        coll.insert_many([{"_id": i} for i in range(3)])
        events = take(stream, 3)
        assert stream.resume_token == events[-1]["_id"]


def test_a_token_begins_with_its_events_cluster_time(coll: Collection[Doc]) -> None:
    # MongoDB: _data is hex of a KeyString whose first value is the cluster time (type byte
    # 0x82, then the timestamp's 8 bytes big-endian); clients read a token's time from it.
    with coll.watch() as stream:
        coll.insert_many([{"_id": i} for i in range(2)])
        for event in take(stream, 2):
            data = event["_id"]["_data"]
            assert data[:2] == "82", data
            value = int(data[2:18], 16)
            assert Timestamp(value >> 32, value & 0xFFFFFFFF) == event["clusterTime"]


def test_a_foreign_token_is_refused(coll: Collection[Doc]) -> None:
    # A token this server never made (another cluster's) is refused, not read as a position.
    with pytest.raises(OperationFailure):
        coll.watch(resume_after={"_data": "826A1B2C3D000000012B0229296E04"}).try_next()


# -- drop: drop, then invalidate ---------------------------------------------------------------


def test_dropping_the_collection_ends_its_stream_with_drop_then_invalidate(
    coll: Collection[Doc],
) -> None:
    # MongoDB: a collection stream sees `drop`, then `invalidate`, and the cursor closes. Only
    # startAfter (not resumeAfter) continues after the invalidate event.
    with coll.watch() as stream:
        coll.insert_one({"_id": 1})
        coll.drop()
        events = take(stream, 3)
        assert [e["operationType"] for e in events] == ["insert", "drop", "invalidate"]
        assert events[1]["ns"] == {"db": coll.database.name, "coll": coll.name}
        assert not stream.alive
    invalidate = events[2]["_id"]
    with pytest.raises(OperationFailure) as caught:
        coll.watch(resume_after=invalidate).try_next()
    assert caught.value.code == 260
    coll.insert_one({"_id": "again"})
    with coll.watch(start_after=invalidate) as stream:
        assert kinds(take(stream, 1)) == [("insert", "again")]


# -- 4. A bounded oplog ----------------------------------------------------------------------


@pytest.fixture()
def bounded(mongo_server: Server, tmp_path: Path) -> Iterator[Server]:
    """A stand-in of its own whose oplog keeps at most 20 entries."""
    server = mongo.start(tmp_path / "bounded", oplog_max_entries=20)
    yield server
    server.stop()


def history_lost(error: OperationFailure) -> None:
    assert error.code == 286
    assert error.details is not None
    assert error.details["codeName"] == "ChangeStreamHistoryLost"
    assert "NonResumableChangeStreamError" in error.details["errorLabels"]


def test_a_trimmed_resume_point_fails_with_history_lost(bounded: Server, tmp_path: Path) -> None:
    # MongoDB: a resume token (or startAtOperationTime) older than the oplog's oldest entry
    # fails with ChangeStreamHistoryLost (286), labelled NonResumableChangeStreamError.
    uri = bounded.exports["LIBERATOR_MONGO_URI"]
    assert bounded.details["oplog_max_entries"] == "20"
    with pymongo.MongoClient(uri) as client:
        coll = client["bounded"]["entities"]
        with coll.watch() as stream:
            coll.insert_many([{"_id": i} for i in range(5)])
            events = take(stream, 5)
        old_token, old_time = events[0]["_id"], events[0]["clusterTime"]
        with coll.watch(resume_after=old_token) as resumed:  # still in the oplog
            assert [e["documentKey"]["_id"] for e in take(resumed, 4)] == [1, 2, 3, 4]

        coll.insert_many([{"_id": i} for i in range(5, 40)])
        assert client["local"]["oplog.rs"].count_documents({"op": {"$ne": "n"}}) == 20
        with pytest.raises(OperationFailure) as caught:
            coll.watch(resume_after=old_token).try_next()
        history_lost(caught.value)
        with pytest.raises(OperationFailure) as caught:
            coll.watch(start_at_operation_time=old_time).try_next()
        history_lost(caught.value)

        # Positions still in the oplog resume; the newest 20 entries are all there.
        with coll.watch(start_at_operation_time=_oldest(client)) as stream:
            assert len(take(stream, 20)) == 20


def test_natural_order_of_the_oplog_is_time_order_after_a_trim(bounded: Server) -> None:
    # MongoDB: local.oplog.rs is a capped collection, so $natural order is insertion (= time)
    # order; rs.printReplicationInfo() reads the window from its first and last entries.
    with pymongo.MongoClient(bounded.exports["LIBERATOR_MONGO_URI"]) as client:
        coll, oplog = client["natural"]["entities"], client["local"]["oplog.rs"]
        for i in range(45):  # one at a time: the store reuses freed slots out of time order
            coll.insert_one({"_id": i})
        forward = [e["ts"] for e in oplog.find({}, sort=[("$natural", 1)])]
        assert forward == sorted(forward) and len(forward) >= 20
        assert [e["ts"] for e in oplog.find({}, sort=[("$natural", -1)])] == forward[::-1]
        assert [e["ts"] for e in oplog.find()] == forward
        first = oplog.find_one({}, {"ts": 1}, sort=[("$natural", 1)])
        assert first is not None and set(first) == {"ts"} and first["ts"] == forward[0]
        newest = oplog.find_one({"op": "i"}, sort=[("$natural", -1)])
        assert newest is not None and newest["o"] == {"_id": 44}
        assert [
            e["o"]["_id"] for e in oplog.find({"op": "i"}, skip=1, limit=2, sort=[("ts", -1)])
        ] == [43, 42]
        with pytest.raises(OperationFailure, match="sorts by \\$natural or ts only"):
            oplog.find_one({}, sort=[("op", 1)])


def _oldest(client: pymongo.MongoClient[Doc]) -> Timestamp:
    """The timestamp of the oldest entry that is not the trim marker."""
    oldest: Timestamp = min(e["ts"] for e in client["local"]["oplog.rs"].find({"op": {"$ne": "n"}}))
    return oldest


def test_a_stream_that_falls_behind_the_trim_fails_on_get_more(bounded: Server) -> None:
    # MongoDB: an open stream whose position was trimmed fails its getMore with 286 too.
    with pymongo.MongoClient(bounded.exports["LIBERATOR_MONGO_URI"]) as client:
        coll = client["behind"]["entities"]
        with coll.watch(batch_size=1) as stream:
            coll.insert_one({"_id": "first"})
            take(stream, 1)
            coll.insert_many([{"_id": i} for i in range(30)])
            with pytest.raises(OperationFailure) as caught:
                for _ in range(100):
                    stream.try_next()
        history_lost(caught.value)


def test_a_trimmed_point_stays_lost_after_a_restart(bounded: Server, tmp_path: Path) -> None:
    uri = bounded.exports["LIBERATOR_MONGO_URI"]
    with pymongo.MongoClient(uri) as client:
        coll = client["restart"]["entities"]
        with coll.watch() as stream:
            coll.insert_one({"_id": "old"})
            token = take(stream, 1)[0]["_id"]
        coll.insert_many([{"_id": i} for i in range(25)])
    bounded.stop()
    again = mongo.start(tmp_path / "bounded", int(bounded.details["port"]), oplog_max_entries=20)
    try:
        with pymongo.MongoClient(uri) as client:
            with pytest.raises(OperationFailure) as caught:
                client["restart"]["entities"].watch(resume_after=token).try_next()
            history_lost(caught.value)
    finally:
        again.stop()


def test_an_age_cap_trims_old_entries_without_new_writes(
    mongo_server: Server, tmp_path: Path
) -> None:
    server = mongo.start(tmp_path / "aged", oplog_max_age_seconds=1.0)
    try:
        assert server.details["oplog_max_age_seconds"] == "1.0"
        with pymongo.MongoClient(server.exports["LIBERATOR_MONGO_URI"]) as client:
            coll = client["aged"]["entities"]
            with coll.watch() as stream:
                coll.insert_many([{"_id": 1}, {"_id": 2}])
                token = take(stream, 2)[0]["_id"]
            # No further write: the timer trims. As MongoDB's, the newest entry stays.
            oplog = client["local"]["oplog.rs"]
            deadline = time.monotonic() + 20
            while oplog.count_documents({"op": "i"}) > 1 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert [e["o"] for e in oplog.find({"op": "i"})] == [{"_id": 2}]
            with pytest.raises(OperationFailure) as caught:
                coll.watch(resume_after=token).try_next()
            history_lost(caught.value)
            with coll.watch() as stream:  # a fresh stream from "now" works
                coll.insert_one({"_id": 3})
                assert kinds(take(stream, 1)) == [("insert", 3)]
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"oplog_max_entries": 0},
            "oplog_max_entries must be a whole number of oplog entries of at least 1, got 0",
        ),
        ({"oplog_max_entries": "10"}, "oplog_max_entries must be a whole number"),
        (
            {"oplog_max_age_seconds": -1.0},
            "oplog_max_age_seconds must be a positive number of seconds, got -1.0",
        ),
    ],
)
def test_start_refuses_a_bad_oplog_cap(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(StackError) as caught:
        mongo.start(tmp_path / "bad", **kwargs).stop()  # stop: only if the test fails
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {mongo.MAX_ENTRIES_ENV: "ten"},
            "LIBERATOR_MONGO_OPLOG_MAX_ENTRIES must be a whole number "
            "of oplog entries, such as 1000, got 'ten'",
        ),
        (
            {mongo.MAX_ENTRIES_ENV: "0"},
            "LIBERATOR_MONGO_OPLOG_MAX_ENTRIES must be a whole number "
            "of oplog entries of at least 1, got 0",
        ),
        (
            {mongo.MAX_AGE_ENV: "1h"},
            "LIBERATOR_MONGO_OPLOG_MAX_AGE_SECONDS must be a number of "
            "seconds, such as 3600, got '1h'",
        ),
        (
            {mongo.MAX_AGE_ENV: "0"},
            "LIBERATOR_MONGO_OPLOG_MAX_AGE_SECONDS must be a positive number of seconds, got 0.0",
        ),
    ],
)
def test_bad_oplog_cap_variables_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(StackError) as caught:
        mongo.oplog_limits(env=env)
    assert message in str(caught.value)


def test_oplog_cap_variables_are_read() -> None:
    assert mongo.oplog_limits(env={}) == (None, None)
    assert mongo.oplog_limits(env={mongo.MAX_ENTRIES_ENV: "50", mongo.MAX_AGE_ENV: "2.5"}) == (
        50,
        2.5,
    )
    assert mongo.oplog_limits(7, None, env={mongo.MAX_ENTRIES_ENV: "50"}) == (7, None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--oplog-max-entries", "many"],
            "--oplog-max-entries must be a whole number of entries, "
            "such as 1000 (at least 1), got 'many'",
        ),
        (["--oplog-max-entries", "0"], "--oplog-max-entries must be a whole number"),
        (["--oplog-max-entries"], "--oplog-max-entries must be a whole number"),
        (
            ["--oplog-max-age-seconds", "soon"],
            "--oplog-max-age-seconds must be a positive number "
            "of seconds, such as 3600, got 'soon'",
        ),
        (["--oplog-size", "1"], "unknown option '--oplog-size'; usage: LiberatorMongo HOST PORT"),
    ],
)
def test_launcher_rejects_bad_oplog_options(
    mongo_server: Server, args: list[str], message: str
) -> None:
    result = run(mongo.launcher_argv("127.0.0.1", "0", "memory", *args))
    assert result.returncode == 2
    assert message in result.stderr

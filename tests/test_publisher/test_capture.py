"""Capture against the real MongoDB (emulator): one outbox document per change, idempotent
re-reads, checkpoints after the insert; and the pure classification of stream errors."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from bson import ObjectId, Timestamp, json_util
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import AutoReconnect, BulkWriteError, OperationFailure

from liberator_publisher.core.mapping import EventMapping
from liberator_publisher.core.status import Progress
from liberator_publisher.sidecar.capture import Capture, CaptureSettings
from liberator_publisher.sidecar.metrics import Metrics
from liberator_publisher.sidecar.outbox import insert_outbox
from liberator_publisher.sidecar.source import Batch, StreamLostError, classify
from liberator_publisher.state.checkpoint import (
    CHECKPOINT_COLLECTION,
    CheckpointError,
    Checkpoints,
    Position,
)
from liberator_publisher.state.identity import IDENTITY_SUFFIX, Identities
from tests.support.publisher import eventually

MAPPING = EventMapping(entity_type="quote", source="//test")


@pytest.fixture()
def db(mongo_uri: str, unique: str) -> Iterator[Database[dict[str, Any]]]:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri, tz_aware=True)
    yield client[f"cap_{unique}"]
    client.drop_database(f"cap_{unique}")
    client.close()


class ScriptedSource:
    """Stands in for the change stream through the seam (source.ChangeSource) for what the
    emulator cannot produce: a quiet stream whose post-batch resume token moves."""

    def __init__(self, *items: Batch | float) -> None:
        self.items = list(items)  # a float is a pause in seconds

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def join(self, timeout: float) -> None: ...

    def next_batch(self, timeout: float) -> Batch | None:
        if not self.items:
            time.sleep(min(timeout, 0.05))
            return None
        item = self.items.pop(0)
        if isinstance(item, float):
            time.sleep(item)
            return None
        return item


class Running:
    """A Capture in a thread, stopped at the end."""

    def __init__(
        self,
        db: Database[dict[str, Any]],
        epoch: int = 1,
        source: ScriptedSource | None = None,
        heartbeat_seconds: float = 5.0,
        mapping: EventMapping = MAPPING,
    ) -> None:
        self.metrics = Metrics()
        self.checkpoints = Checkpoints(db[CHECKPOINT_COLLECTION], "test/cap")
        self.capture = Capture(
            entities=db["quotes"],
            outbox=db["quotes.outbox"],
            identities=Identities(
                db["quotes.outbox"], db["quotes" + IDENTITY_SUFFIX], mapping.id_field
            ),
            checkpoints=self.checkpoints,
            mapping=mapping,
            metrics=self.metrics,
            progress=Progress(),
            epoch=epoch,
            pod="test",
            settings=CaptureSettings(
                batch_size=50, max_await_ms=100, heartbeat_seconds=heartbeat_seconds
            ),
            open_source=(lambda _: source) if source else None,
        )
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def started(self) -> Running:
        """Wait until the start position is saved: changes from then on are captured."""
        eventually(
            lambda: self.error or not self.checkpoints.load("capture").empty,
            what="capture's start position saved",
        )
        assert self.error is None, self.error
        return self

    def _run(self) -> None:
        try:
            self.capture.run(lambda: not self.stop.is_set())
        except BaseException as error:
            self.error = error

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()


def test_each_change_becomes_one_outbox_document(db: Database[dict[str, Any]]) -> None:
    # The start position is saved before any change, so nothing made from now on is missed.
    running = Running(db).started()
    db["quotes"].insert_many([{"_id": f"q{i}", "n": i} for i in range(120)])
    db["quotes"].update_one({"_id": "q1"}, {"$set": {"n": -1}})
    db["quotes"].delete_one({"_id": "q2"})
    outbox = db["quotes.outbox"]
    eventually(lambda: outbox.count_documents({}) == 122, what="122 outbox documents")
    running.close()
    assert running.error is None
    assert running.metrics.captured._value.get() == 122
    assert {d["operation"] for d in outbox.find()} == {"insert", "update", "delete"}
    assert outbox.count_documents({"status": "pending"}) == 122
    update = outbox.find_one({"operation": "update"})
    assert update is not None and update["type"] == "quote.updated" and "-1" in update["data"]


def capture_insert_then_delete(
    db: Database[dict[str, Any]], key: Any, entity: str
) -> tuple[Running, dict[str, Any], dict[str, Any]]:
    """Capture one batch, through the change-source seam, that inserts a document keyed by a
    business id and deletes it: the outbox holds nothing of it yet, so only the batch itself can
    name the deleted entity. Returns the run and the two outbox documents."""
    batch = Batch(
        [
            {
                "_id": {"_data": "01"},
                "operationType": "insert",
                "documentKey": {"_id": key},
                "fullDocument": {"_id": key, "quoteId": entity, "p": 1},
                "clusterTime": Timestamp(1700000000, 1),
            },
            {
                "_id": {"_data": "02"},
                "operationType": "delete",
                "documentKey": {"_id": key},
                "clusterTime": Timestamp(1700000000, 2),
            },
        ],
        Position(token={"_data": "02"}),
    )
    mapping = EventMapping(entity_type="quote", source="//test", id_field="quoteId")
    running = Running(db, source=ScriptedSource(batch), mapping=mapping)
    outbox = db["quotes.outbox"]
    eventually(lambda: outbox.count_documents({}) == 2, what="both changes captured")
    running.close()
    assert running.error is None
    created, deleted = outbox.find(sort=[("clusterTime", 1)])
    return running, created, deleted


def test_insert_then_delete_by_business_id_in_one_batch(db: Database[dict[str, Any]]) -> None:
    oid = ObjectId()
    running, created, deleted = capture_insert_then_delete(db, oid, "Q-5")
    assert (created["type"], created["entityId"]) == ("quote.created", "Q-5")
    assert (deleted["type"], deleted["status"], deleted["entityId"]) == (
        "quote.deleted",
        "pending",
        "Q-5",
    )
    assert deleted["attributes"]["ce-subject"] == "Q-5"
    assert json_util.loads(deleted["data"]) == {"_id": oid, "quoteId": "Q-5"}
    assert running.metrics.failed.labels(stage="capture")._value.get() == 0


def test_a_sub_document_id_is_named_again_within_a_batch(db: Database[dict[str, Any]]) -> None:
    key = {"region": "eu", "n": 7}  # MongoDB allows any non-array _id, a document too
    _, _, deleted = capture_insert_then_delete(db, key, "Q-eu-7")
    assert (deleted["status"], deleted["entityId"]) == ("pending", "Q-eu-7")
    assert json_util.loads(deleted["data"]) == {"_id": key, "quoteId": "Q-eu-7"}


def test_changes_read_again_from_an_older_checkpoint_are_not_duplicated(
    db: Database[dict[str, Any]],
) -> None:
    outbox = db["quotes.outbox"]
    first = Running(db).started()
    db["quotes"].insert_one({"_id": "a"})
    eventually(lambda: outbox.count_documents({}) == 1, what="first change captured")
    eventually(lambda: first.checkpoints.load("capture").token is not None, what="checkpoint")
    first.close()
    older = first.checkpoints.load("capture")
    db["quotes"].insert_many([{"_id": "b"}, {"_id": "c"}])
    second = Running(db)
    eventually(lambda: outbox.count_documents({}) == 3, what="the two later changes")
    second.close()
    ids = {d["_id"] for d in outbox.find()}
    # As after a crash between the outbox insert and the checkpoint: rewind and read again.
    first.checkpoints.save("capture", 1, older, "test")
    third = Running(db)
    eventually(lambda: third.checkpoints.load("capture") != older, what="re-read past b and c")
    third.close()
    assert third.error is None
    assert {d["_id"] for d in outbox.find()} == ids and outbox.count_documents({}) == 3
    assert third.metrics.captured._value.get() == 0  # duplicates count as already captured


def test_checkpoint_is_written_only_after_the_outbox_insert(db: Database[dict[str, Any]]) -> None:
    running = Running(db).started()
    db["quotes"].insert_one({"_id": "a"})
    outbox = db["quotes.outbox"]
    eventually(lambda: outbox.count_documents({}) == 1, what="captured")
    eventually(
        lambda: running.checkpoints.load("capture").token is not None,
        what="checkpoint moved to the change's token",
    )
    event = outbox.find_one()
    assert event is not None
    assert running.checkpoints.load("capture").token == event["token"]
    running.close()


def test_a_newer_epoch_stops_capture_with_fenced(db: Database[dict[str, Any]]) -> None:
    running = Running(db, epoch=1).started()
    Checkpoints(db[CHECKPOINT_COLLECTION], "test/cap").claim(2, "newer")
    db["quotes"].insert_one({"_id": "late"})
    eventually(lambda: not running.thread.is_alive(), what="capture stopped")
    assert type(running.error).__name__ == "FencedError"
    # The change was captured (idempotent) but the checkpoint stays the newer leader's.
    assert db[CHECKPOINT_COLLECTION].find_one({"_id": "test/cap#capture"})["epoch"] == 2


def test_a_quiet_stream_saves_its_post_batch_token(db: Database[dict[str, Any]]) -> None:
    # MongoDB moves the post-batch resume token on a quiet stream; the emulator does not, so a
    # scripted source stands in for the change stream here (and only here).
    first, later = {"_data": "82000000010000"}, {"_data": "82000000020000"}
    source = ScriptedSource(Batch([], Position(token=first)), 0.3, Batch([], Position(token=later)))
    running = Running(db, source=source, heartbeat_seconds=0.2)
    eventually(
        lambda: running.checkpoints.load("capture").token == later, what="the heartbeat token saved"
    )
    running.close()
    assert running.error is None
    assert db["quotes.outbox"].count_documents({}) == 0


def test_a_duplicate_on_another_unique_index_is_an_error_not_captured(
    db: Database[dict[str, Any]],
) -> None:
    outbox = db["quotes.outbox"]
    outbox.create_index("entityId", unique=True)
    outbox.insert_one({"_id": "first", "entityId": "same"})
    with pytest.raises(BulkWriteError):
        insert_outbox(outbox, [{"_id": "second", "entityId": "same"}])


def test_insert_outbox_counts_duplicates_as_captured(db: Database[dict[str, Any]]) -> None:
    outbox = db["quotes.outbox"]
    assert insert_outbox(outbox, [{"_id": "x"}, {"_id": "y"}]) == {0, 1}
    assert insert_outbox(outbox, [{"_id": "x"}, {"_id": "z"}, {"_id": "y"}]) == {1}
    assert outbox.count_documents({}) == 3
    assert insert_outbox(outbox, []) == set()


# -- pure: which stream errors park ------------------------------------------------------------
# The emulator never raises these codes; MongoDB documents them, so they are checked here.


@pytest.mark.parametrize(
    ("code", "label"),
    [
        (286, "history_lost"),
        (260, "resume_token_rejected"),
        (280, "stream_fatal"),
        (136, "history_lost"),
    ],
)
def test_codes_that_mean_the_position_is_gone_park(code: int, label: str) -> None:
    lost = classify(OperationFailure("boom", code=code))
    assert isinstance(lost, StreamLostError) and lost.code == label
    assert "EventSeed" in str(lost) and "--reset-checkpoint" in str(lost)


def test_messages_and_labels_that_mean_the_position_is_gone_park() -> None:
    phrase = OperationFailure(
        "Resume of change stream was not possible, as the resume point may "
        "no longer be in the oplog.",
        code=1,
    )
    lost = classify(phrase)
    assert lost is not None and lost.code == "history_lost"
    labelled = OperationFailure(
        "x", code=2, details={"errorLabels": ["NonResumableChangeStreamError"]}
    )
    assert classify(labelled) is not None


def test_transient_errors_do_not_park() -> None:
    assert classify(AutoReconnect("connection reset")) is None
    assert classify(OperationFailure("not primary", code=10107)) is None
    assert classify(ValueError("x")) is None


def test_a_damaged_checkpoint_parks() -> None:
    lost = classify(CheckpointError("p#capture", "token", "must be a document"))
    assert lost is not None and lost.code == "checkpoint_invalid" and "'token'" in str(lost)

"""Fenced checkpoints, against the real MongoDB (emulator) of the local stack."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from bson import Timestamp
from pymongo import MongoClient
from pymongo.collection import Collection

from liberator_publisher.state.checkpoint import (
    CHECKPOINT_COLLECTION,
    CheckpointError,
    Checkpoints,
    FencedError,
    Position,
)


@pytest.fixture()
def collection(mongo_uri: str, unique: str) -> Iterator[Collection[dict[str, Any]]]:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri, tz_aware=True)
    yield client[f"cp_{unique}"][CHECKPOINT_COLLECTION]
    client.drop_database(f"cp_{unique}")
    client.close()


TOKEN_A = {"_data": "8200000001"}
TOKEN_B = {"_data": "8200000002"}


def test_save_and_load_round_trip(collection: Collection[dict[str, Any]]) -> None:
    checkpoints = Checkpoints(collection, "ns/pub")
    assert checkpoints.load("capture").empty
    checkpoints.save("capture", 1, Position(token=TOKEN_A), "pod-a")
    checkpoints.save("relay", 1, Position(operation_time=Timestamp(1700000000, 3)), "pod-a")
    assert checkpoints.load("capture") == Position(token=TOKEN_A)
    assert checkpoints.load("relay") == Position(operation_time=Timestamp(1700000000, 3))
    assert checkpoints.epoch("capture") == 1
    # Another publisher in the same database has its own checkpoints.
    assert Checkpoints(collection, "ns/other").load("capture").empty


def test_a_write_from_an_older_epoch_is_refused_and_changes_nothing(
    collection: Collection[dict[str, Any]],
) -> None:
    checkpoints = Checkpoints(collection, "ns/pub")
    checkpoints.save("capture", 4, Position(token=TOKEN_A), "old")
    checkpoints.claim(5, "new")  # the new leader stamps its epoch before it writes anything
    with pytest.raises(FencedError, match="newer epoch"):
        checkpoints.save("capture", 4, Position(token=TOKEN_B), "old")
    with pytest.raises(FencedError):
        checkpoints.claim(3, "older")
    stored = collection.find_one({"_id": "ns/pub#capture"})
    assert stored is not None and stored["token"] == TOKEN_A and stored["epoch"] == 5
    checkpoints.save("capture", 5, Position(token=TOKEN_B), "new")
    assert checkpoints.load("capture") == Position(token=TOKEN_B)


def test_reset_removes_both_checkpoints(collection: Collection[dict[str, Any]]) -> None:
    checkpoints = Checkpoints(collection, "ns/pub")
    checkpoints.save("capture", 1, Position(token=TOKEN_A), "p")
    checkpoints.save("relay", 1, Position(token=TOKEN_B), "p")
    assert checkpoints.reset() == 2
    assert checkpoints.load("capture").empty and checkpoints.load("relay").empty


@pytest.mark.parametrize(
    ("field", "value"), [("token", "not-a-document"), ("operationTime", 12345)]
)
def test_a_damaged_checkpoint_names_its_field_instead_of_starting_from_now(
    collection: Collection[dict[str, Any]], field: str, value: object
) -> None:
    collection.insert_one({"_id": "ns/pub#capture", field: value, "epoch": 1})
    with pytest.raises(CheckpointError, match=f"field '{field}'") as caught:
        Checkpoints(collection, "ns/pub").load("capture")
    assert caught.value.field == field
    assert "reset-checkpoint" in str(caught.value)


def test_unknown_loop_name_is_an_error(collection: Collection[dict[str, Any]]) -> None:
    with pytest.raises(ValueError, match="unknown loop 'seed'"):
        Checkpoints(collection, "ns/pub").load("seed")

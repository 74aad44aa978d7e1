"""Event mapping: changes to outbox documents to Pub/Sub messages (pure; no servers)."""

from __future__ import annotations

import datetime
import json
import re
import uuid
from pathlib import Path
from typing import Any

import bson
import pytest
from bson import Binary, Decimal128, ObjectId, Timestamp, json_util
from hypothesis import given, settings
from hypothesis import strategies as st

from liberator_publisher.core.encoding import JSON_OPTIONS
from liberator_publisher.core.event import (
    event_id_for_token,
    needs_identity,
    outbox_document_for_change,
    outbox_document_for_entity,
)
from liberator_publisher.core.mapping import EventMapping, entity_id_of, version_of
from liberator_publisher.core.message import (
    MAX_ATTRIBUTE_KEY_BYTES,
    MAX_ATTRIBUTE_VALUE_BYTES,
    MAX_ATTRIBUTES,
    MAX_MESSAGE_BYTES,
    MAX_ORDERING_KEY_BYTES,
    Message,
    Unpublishable,
    check_limits,
    message_for,
)
from tests.test_publisher.test_encoding import documents, values

UTC = datetime.UTC
CAPTURED = datetime.datetime(2030, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)
WALL = datetime.datetime(2024, 3, 4, 5, 6, 7, 890000)
OID = ObjectId("65f0a1b2c3d4e5f6a7b8c9d0")
MAPPING = EventMapping(entity_type="quote", source="//liberator/shop/quotes")


def change(
    operation: str,
    document: dict[str, Any] | None = None,
    *,
    token: str = "82A1",
    key: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A change stream event as pymongo decodes it."""
    body: dict[str, Any] = {
        "_id": {"_data": token},
        "operationType": operation,
        "ns": {"db": "shop", "coll": "quotes"},
        "documentKey": key if key is not None else {"_id": OID},
        "wallTime": WALL,
        "clusterTime": Timestamp(1700000000, 1),
    }
    if document is not None:
        body["fullDocument"] = document
    body.update(extra)
    return body


def outbox(ch: dict[str, Any], mapping: EventMapping = MAPPING) -> dict[str, Any]:
    return outbox_document_for_change(ch, mapping, captured_at=CAPTURED)


def data_of(document: dict[str, Any]) -> Any:
    return json_util.loads(document["data"], json_options=JSON_OPTIONS)


def assert_failed(document: dict[str, Any], *words: str) -> None:
    """A failed outbox document: storable, findable, with a reason that says what is wrong."""
    assert document["status"] == "failed", document
    for word in words:
        assert word in document["reason"], (word, document["reason"])
    assert {"_id", "operation", "capturedAt", "attempts"} <= document.keys()
    assert "data" not in document and "attributes" not in document
    assert len(bson.encode(document)) < 64 * 1024  # small: the bad payload is not copied in


# --- types and attributes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "event_type"),
    [("insert", "quote.created"), ("update", "quote.updated"), ("replace", "quote.updated")],
)
def test_operation_gives_the_derived_type(operation: str, event_type: str) -> None:
    document = outbox(change(operation, {"_id": OID, "price": 5}))
    assert document["status"] == "pending"
    assert document["type"] == event_type
    assert document["attributes"]["ce-type"] == event_type
    assert document["operation"] == operation
    assert data_of(document) == {"_id": OID, "price": 5}


def test_attributes_follow_the_cloudevents_pubsub_binding() -> None:
    document = outbox(change("insert", {"_id": OID, "price": 5}))
    attributes = document["attributes"]
    assert attributes == {
        "ce-specversion": "1.0",
        "ce-id": document["_id"],
        "ce-source": "//liberator/shop/quotes",
        "ce-type": "quote.created",
        "ce-time": "2024-03-04T05:06:07.890Z",
        "ce-subject": str(OID),
        "content-type": "application/json",
    }
    assert document["entityId"] == document["orderingKey"] == str(OID)
    assert document["token"] == {"_data": "82A1"}
    assert document["capturedAt"] == CAPTURED
    assert document["attempts"] == 0
    uuid.UUID(document["_id"])  # a UUID string
    bson.encode(document)  # storable as is


def test_time_falls_back_from_wall_time_to_cluster_time_to_capture_time() -> None:
    no_wall = change("insert", {"_id": OID})
    del no_wall["wallTime"]
    assert outbox(no_wall)["attributes"]["ce-time"] == "2023-11-14T22:13:20.000Z"
    del no_wall["clusterTime"]
    assert outbox(no_wall)["attributes"]["ce-time"] == "2030-01-01T00:00:00.500Z"
    offset = datetime.timezone(datetime.timedelta(hours=-5))
    local = change(
        "insert", {"_id": OID}, wallTime=datetime.datetime(2024, 1, 1, 19, 0, tzinfo=offset)
    )
    assert outbox(local)["attributes"]["ce-time"] == "2024-01-02T00:00:00.000Z"


def test_event_context_sets_type_and_extensions_and_is_stripped() -> None:
    document = outbox(
        change(
            "update",
            {
                "_id": OID,
                "price": 7,
                "_event": {
                    "type": "quote.purchased",
                    "correlationId": "corr-1",
                    "causationId": "cause-2",
                    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                    "note": "ignored",
                },
            },
        )
    )
    assert document["status"] == "pending"
    assert document["type"] == "quote.purchased"
    attributes = document["attributes"]
    assert attributes["ce-type"] == "quote.purchased"
    assert attributes["ce-correlationid"] == "corr-1"
    assert attributes["ce-causationid"] == "cause-2"
    assert attributes["ce-traceparent"].startswith("00-0af7")
    assert "note" not in str(attributes)
    assert data_of(document) == {"_id": OID, "price": 7}


def test_context_without_type_keeps_the_derived_type_and_null_extensions_are_absent() -> None:
    document = outbox(
        change("insert", {"_id": OID, "_event": {"correlationId": "c", "causationId": None}})
    )
    assert document["type"] == "quote.created"
    assert document["attributes"]["ce-correlationid"] == "c"
    assert "ce-causationid" not in document["attributes"]
    assert outbox(change("insert", {"_id": OID, "_event": None}))["status"] == "pending"


def test_custom_context_field_and_exclusions() -> None:
    mapping = EventMapping(
        "quote", "src", event_context_field="meta", exclude_fields=frozenset({"secret", "internal"})
    )
    document = outbox(
        change(
            "insert",
            {
                "_id": OID,
                "secret": "s",
                "keep": {"secret": 1},
                "internal": [1],
                "meta": {"type": "quote.drafted"},
                "_event": {"type": "ignored"},
            },
        ),
        mapping,
    )
    assert document["type"] == "quote.drafted"
    # Only top-level fields are excluded; a field named _event is data under this mapping.
    assert data_of(document) == {"_id": OID, "keep": {"secret": 1}, "_event": {"type": "ignored"}}


def test_version_field_becomes_entityversion() -> None:
    mapping = EventMapping("quote", "src", version_field="version")
    assert (
        outbox(change("insert", {"_id": OID, "version": 3}), mapping)["attributes"][
            "ce-entityversion"
        ]
        == "3"
    )
    assert "ce-entityversion" not in outbox(change("insert", {"_id": OID}), mapping)["attributes"]
    assert (
        outbox(change("insert", {"_id": OID, "version": "v3"}), mapping)["attributes"][
            "ce-entityversion"
        ]
        == "v3"
    )


def test_immutable_entity_new_version_insert_is_created() -> None:
    # An immutable entity keeps one document per version; the entity id is its own field.
    mapping = EventMapping("quote", "src", id_field="quoteId", version_field="version")
    first = outbox(
        change("insert", {"_id": ObjectId(), "quoteId": "Q-1", "version": 1}, token="t1"), mapping
    )
    second = outbox(
        change("insert", {"_id": ObjectId(), "quoteId": "Q-1", "version": 2}, token="t2"), mapping
    )
    for document, version in ((first, "1"), (second, "2")):
        assert document["type"] == "quote.created"
        assert document["entityId"] == document["orderingKey"] == "Q-1"
        assert document["attributes"]["ce-subject"] == "Q-1"
        assert document["attributes"]["ce-entityversion"] == version
    assert first["_id"] != second["_id"]


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        (OID, str(OID)),
        ("Q-1", "Q-1"),
        (42, "42"),
        (bson.Int64(2**40), str(2**40)),
        (uuid.UUID(int=7), str(uuid.UUID(int=7))),
        (Binary(uuid.UUID(int=7).bytes, 4), str(uuid.UUID(int=7))),
        (1.5, "1.5"),
        (True, "true"),
        ({"region": "eu", "n": 1}, '{"region":"eu","n":1}'),
    ],
)
def test_entity_id_rendering(value: Any, rendered: str) -> None:
    document = outbox(change("insert", {"_id": value}, key={"_id": value}))
    assert document["entityId"] == rendered
    assert document["attributes"]["ce-subject"] == rendered


# --- deletes ----------------------------------------------------------------------------------


def test_delete_carries_the_document_key() -> None:
    document = outbox(change("delete"))
    assert document["status"] == "pending"
    assert document["type"] == "quote.deleted"
    assert document["entityId"] == str(OID)
    assert data_of(document) == {"_id": OID}


def test_delete_with_before_image_carries_it_stripped_and_ignores_its_context() -> None:
    mapping = EventMapping("quote", "src", version_field="v", exclude_fields=frozenset({"pw"}))
    before = {
        "_id": OID,
        "v": 4,
        "pw": "x",
        "price": 1,
        "_event": {"type": "quote.purchased", "correlationId": "old"},
    }
    document = outbox(change("delete", fullDocumentBeforeChange=before), mapping)
    assert document["type"] == "quote.deleted"  # the context described the last write
    assert "ce-correlationid" not in document["attributes"]
    assert document["attributes"]["ce-entityversion"] == "4"
    assert data_of(document) == {"_id": OID, "v": 4, "price": 1}


def test_delete_of_a_never_seen_document_fails_saying_so() -> None:
    mapping = EventMapping("quote", "src", id_field="quoteId")
    document = outbox(change("delete"), mapping)
    assert_failed(
        document,
        f'{{"$oid":"{OID}"}}',
        "never saw",
        "'quoteId'",
        "changeStreamPreAndPostImages",
        "EventSeed",
    )
    assert "entityId" not in document
    assert document["key"] == OID  # still findable by its document
    with_before = outbox(
        change("delete", fullDocumentBeforeChange={"_id": OID, "quoteId": "Q-9"}), mapping
    )
    assert with_before["status"] == "pending"
    assert with_before["entityId"] == "Q-9"


def test_delete_by_business_id_carries_the_key_and_the_known_id() -> None:
    mapping = EventMapping("quote", "src", id_field="quoteId", version_field="v")
    ch = change("delete")
    assert needs_identity(ch, mapping)
    document = outbox_document_for_change(ch, mapping, captured_at=CAPTURED, known_id="Q-7")
    assert document["status"] == "pending"
    assert (document["entityId"], document["orderingKey"]) == ("Q-7", "Q-7")
    assert document["attributes"]["ce-subject"] == "Q-7"
    assert document["attributes"]["ce-type"] == "quote.deleted"
    assert "ce-entityversion" not in document["attributes"]  # the key holds no version
    assert data_of(document) == {"_id": OID, "quoteId": "Q-7"}
    assert document["key"] == OID


def test_delete_keeps_the_id_value_type_it_was_seen_with() -> None:
    mapping = EventMapping("quote", "src", id_field="quoteId")
    document = outbox_document_for_change(
        change("delete"), mapping, captured_at=CAPTURED, known_id=1042
    )
    assert document["entityId"] == "1042"
    assert data_of(document) == {"_id": OID, "quoteId": 1042}


def test_real_before_image_wins_over_a_known_id() -> None:
    mapping = EventMapping("quote", "src", id_field="quoteId")
    ch = change("delete", fullDocumentBeforeChange={"_id": OID, "quoteId": "Q-real", "p": 1})
    assert not needs_identity(ch, mapping)
    document = outbox_document_for_change(ch, mapping, captured_at=CAPTURED, known_id="Q-old")
    assert document["entityId"] == "Q-real"
    assert data_of(document) == {"_id": OID, "quoteId": "Q-real", "p": 1}


def test_only_deletes_without_the_id_in_their_key_need_a_look_up() -> None:
    by_business_id = EventMapping("quote", "src", id_field="quoteId")
    assert not needs_identity(change("delete"), MAPPING)  # the key is the entity id
    assert not needs_identity(change("update", {"_id": OID, "quoteId": "Q"}), by_business_id)
    assert needs_identity(change("delete", key={"_id": OID, "shard": 1}), by_business_id)
    assert not needs_identity(
        change("delete", key={"_id": OID, "quoteId": "Q"}), by_business_id
    )  # a shard key that holds it


def test_every_change_records_its_document_key() -> None:
    assert outbox(change("insert", {"_id": OID, "p": 1}))["key"] == OID
    assert outbox(change("update"))["key"] == OID  # failed (no fullDocument), still keyed


# --- ids --------------------------------------------------------------------------------------


def test_event_id_is_deterministic_per_token() -> None:
    token = {"_data": "8265F0A1B2000000012B022C0100296E5A1004"}
    assert event_id_for_token(token) == event_id_for_token(dict(token))
    assert event_id_for_token(token) != event_id_for_token({"_data": token["_data"] + "0"})
    assert uuid.UUID(event_id_for_token(token)).version == 5
    first = outbox(change("insert", {"_id": OID, "n": 1}, token="A"))
    again = outbox(change("insert", {"_id": OID, "n": 1}, token="A"))
    other = outbox(change("insert", {"_id": OID, "n": 1}, token="B"))
    assert first == again  # a re-read change gives the same outbox document
    assert first["_id"] == first["attributes"]["ce-id"] == event_id_for_token({"_data": "A"})
    assert other["_id"] != first["_id"]


def test_event_id_rejects_a_non_document_token() -> None:
    with pytest.raises(ValueError, match="resume token"):
        event_id_for_token({"bad": {1, 2}})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="resume token"):
        outbox({"operationType": "insert", "fullDocument": {"_id": 1}})


# --- bad input becomes a failed document, never an exception ---------------------------------


@pytest.mark.parametrize(
    ("document", "words", "entity_id"),
    [
        ({"price": 1}, ["no id field '_id'"], None),
        ({"_id": None}, ["no id field '_id'"], None),
        ({"_id": ""}, ["id field '_id' is an empty string"], None),
        ({"_id": {"k": {1}}}, ["id field '_id'", "set"], None),
        ({"_id": 1, "_event": "quote.purchased"}, ["'_event' must be a sub-document", "str"], "1"),
        (
            {"_id": 1, "_event": {"type": 5}},
            ["'_event.type' must be a non-empty string", "int"],
            "1",
        ),
        ({"_id": 1, "_event": {"type": "  "}}, ["'_event.type' must be a non-empty string"], "1"),
        ({"_id": 1, "_event": {"correlationId": 5}}, ["'_event.correlationId'", "int"], "1"),
        ({"_id": 1, "_event": {"traceparent": ""}}, ["'_event.traceparent'"], "1"),
        ({"_id": 1, "tags": {"a", "b"}}, ["cannot encode the document at .tags", "set"], "1"),
        ({"_id": 1, "text": "bad \udc80"}, ["not valid Unicode"], "1"),
        ({"_id": 1, "blob": "x" * (MAX_MESSAGE_BYTES + 1)}, ["bytes", str(MAX_MESSAGE_BYTES)], "1"),
        (
            {"_id": 1, "_event": {"correlationId": "c" * (MAX_ATTRIBUTE_VALUE_BYTES + 1)}},
            ["ce-correlationid", str(MAX_ATTRIBUTE_VALUE_BYTES)],
            "1",
        ),
        (
            {"_id": "k" * (MAX_ORDERING_KEY_BYTES + 1)},
            ["id field '_id' is 1025 bytes", "ordering key"],
            "k" * MAX_ORDERING_KEY_BYTES,
        ),
    ],
)
def test_bad_documents_give_failed_outbox_documents(
    document: dict[str, Any], words: list[str], entity_id: str | None
) -> None:
    result = outbox(change("insert", document, token="bad"))
    assert_failed(result, *words)
    assert result["_id"] == event_id_for_token({"_data": "bad"})
    assert result["operation"] == "insert"
    assert result["token"] == {"_data": "bad"}
    assert result["capturedAt"] == CAPTURED
    assert result.get("entityId") == entity_id


def test_failed_document_keeps_the_type_when_known() -> None:
    result = outbox(change("insert", {"_id": 1, "_event": {"type": "quote.x"}, "s": {1}}))
    assert_failed(result, "set")
    assert result["type"] == "quote.x"


def test_update_without_full_document_fails_and_names_the_cause() -> None:
    result = outbox(change("update", None, updateDescription={"updatedFields": {"a": 1}}))
    assert_failed(result, "no fullDocument", "updateLookup")
    assert result["entityId"] == str(OID)


@pytest.mark.parametrize("operation", ["drop", "rename", "invalidate", None])
def test_non_document_operations_fail_without_raising(operation: str | None) -> None:
    result = outbox(change(operation, None))  # type: ignore[arg-type]
    assert_failed(result, repr(operation), "not a document change")


def test_version_that_cannot_be_encoded_fails() -> None:
    mapping = EventMapping("quote", "src", version_field="v")
    assert_failed(outbox(change("insert", {"_id": 1, "v": {1}}), mapping), "version field 'v'")


@settings(max_examples=150, deadline=None)
@given(document=documents, context=values, id_value=values)
def test_any_document_gives_a_storable_outbox_document(
    document: dict[str, Any], context: Any, id_value: Any
) -> None:
    document = {"_id": id_value, **document, "_event": context}
    result = outbox(change("replace", document))
    assert result["status"] in ("pending", "failed")
    bson.encode(result)
    if result["status"] == "pending":
        message = message_for(result)
        loaded = json_util.loads(message.data, json_options=JSON_OPTIONS)
        assert "_event" not in loaded
        assert message.ordering_key == result["entityId"] != ""


# --- seed (entity) documents ------------------------------------------------------------------


def test_outbox_document_for_entity_is_the_same_format_without_token() -> None:
    mapping = EventMapping("quote", "src", version_field="v")
    time = datetime.datetime(2024, 6, 1, tzinfo=UTC)
    document = outbox_document_for_entity(
        {"_id": OID, "v": 2, "_event": {"type": "q.x"}},
        mapping,
        event_id="seed-1",
        operation="insert",
        time=time,
        extra_attributes={"ce-seed": "true"},
    )
    assert document["status"] == "pending"
    assert "token" not in document
    assert document["capturedAt"] == time
    assert document["_id"] == document["attributes"]["ce-id"] == "seed-1"
    assert document["attributes"]["ce-seed"] == "true"
    assert document["attributes"]["ce-time"] == "2024-06-01T00:00:00.000Z"
    assert document["type"] == "q.x"
    assert data_of(document) == {"_id": OID, "v": 2}
    plain = outbox_document_for_entity(
        {"_id": OID}, MAPPING, event_id="seed-2", operation="insert", time=time
    )
    assert plain["type"] == "quote.created"
    assert "ce-seed" not in plain["attributes"]


def test_outbox_document_for_entity_fails_softly_on_bad_documents() -> None:
    result = outbox_document_for_entity(
        {"x": 1}, MAPPING, event_id="e", operation="insert", time=CAPTURED
    )
    assert_failed(result, "'_id'")
    assert "token" not in result


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"operation": "upsert"}, "operation must be one of"),
        ({"event_id": ""}, "event_id must be a non-empty string"),
        ({"extra_attributes": {"ce-type": "x"}}, "would replace a CloudEvent attribute"),
    ],
)
def test_outbox_document_for_entity_rejects_bad_arguments(
    kwargs: dict[str, Any], words: str
) -> None:
    arguments: dict[str, Any] = {"event_id": "e", "operation": "insert", "time": CAPTURED, **kwargs}
    with pytest.raises(ValueError, match=words):
        outbox_document_for_entity({"_id": 1}, MAPPING, **arguments)


# --- messages and limits ----------------------------------------------------------------------


def test_message_for_a_pending_document() -> None:
    document = outbox(change("insert", {"_id": OID, "name": "é"}))
    message = message_for(document)
    assert message.data == document["data"].encode("utf-8")
    assert message.attributes == document["attributes"]
    assert message.ordering_key == str(OID)
    # The relay reads the document back from MongoDB: it must work after a BSON round trip.
    assert message_for(bson.decode(bson.encode(document))) == message


@pytest.mark.parametrize(
    ("change_fields", "words"),
    [
        ({"status": "failed", "reason": "too big"}, "failed at capture: too big"),
        ({"data": None}, "field 'data' must be a string"),
        ({"data": b"{}"}, "field 'data' must be a string"),
        ({"attributes": ["ce-id"]}, "field 'attributes' must be a sub-document of strings"),
        ({"attributes": {"ce-id": 1}}, "field 'attributes' must be a sub-document of strings"),
        ({"orderingKey": 5}, "field 'orderingKey' must be a string"),
        ({"attributes": {"goog-x": "1"}}, "starts with 'goog'"),
    ],
)
def test_message_for_rejects_bad_outbox_documents(
    change_fields: dict[str, Any], words: str
) -> None:
    document = {**outbox(change("insert", {"_id": OID})), **change_fields}
    with pytest.raises(Unpublishable, match=words) as caught:
        message_for(document)
    assert document["_id"] in caught.value.reason


def test_message_for_rejects_missing_fields() -> None:
    document = outbox(change("insert", {"_id": OID}))
    for name in ("data", "attributes", "orderingKey"):
        broken = {k: v for k, v in document.items() if k != name}
        with pytest.raises(Unpublishable, match=f"field '{name}'"):
            message_for(broken)


def _message(
    attributes: dict[str, str] | None = None, data: bytes = b"{}", ordering_key: str = "k"
) -> Message:
    return Message(data=data, attributes=attributes or {"a": "1"}, ordering_key=ordering_key)


def test_limits_at_and_over_the_bounds() -> None:
    check_limits(_message({f"k{i}": "v" for i in range(MAX_ATTRIBUTES)}))
    with pytest.raises(Unpublishable, match=f"101 attributes; Pub/Sub allows at most {100}"):
        check_limits(_message({f"k{i}": "v" for i in range(MAX_ATTRIBUTES + 1)}))

    check_limits(_message({"k" * MAX_ATTRIBUTE_KEY_BYTES: "v"}))
    with pytest.raises(Unpublishable, match="257 bytes; Pub/Sub allows at most 256"):
        check_limits(_message({"k" * (MAX_ATTRIBUTE_KEY_BYTES + 1): "v"}))

    check_limits(_message({"k": "v" * MAX_ATTRIBUTE_VALUE_BYTES}))
    with pytest.raises(Unpublishable, match="attribute k is 1025 bytes"):
        check_limits(_message({"k": "v" * (MAX_ATTRIBUTE_VALUE_BYTES + 1)}))
    # Bytes, not characters: 513 two-byte characters are over.
    with pytest.raises(Unpublishable, match="attribute k is 1026 bytes"):
        check_limits(_message({"k": "é" * 513}))

    check_limits(_message(ordering_key="o" * MAX_ORDERING_KEY_BYTES))
    with pytest.raises(Unpublishable, match="ordering key"):
        check_limits(_message(ordering_key="o" * (MAX_ORDERING_KEY_BYTES + 1)))

    with pytest.raises(Unpublishable, match="empty"):
        check_limits(_message({"": "v"}))


def test_total_size_counts_data_attributes_and_ordering_key() -> None:
    attributes = {"key": "value"}  # 8 bytes
    room = MAX_MESSAGE_BYTES - 8 - 1  # ordering key "k"
    check_limits(_message(attributes, data=b"x" * room))
    with pytest.raises(Unpublishable, match=f"is {MAX_MESSAGE_BYTES + 1} bytes"):
        check_limits(_message(attributes, data=b"x" * (room + 1)))


# --- mapping ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"entity_type": ""}, "entity_type"),
        ({"source": ""}, "source"),
        ({"id_field": ""}, "id_field"),
        ({"event_context_field": ""}, "event_context_field"),
        ({"version_field": ""}, "version_field"),
        ({"event_context_field": "_id"}, "event_context_field must differ"),
        ({"exclude_fields": frozenset({"_id"})}, "exclude_fields must not hold the id field"),
    ],
)
def test_event_mapping_rejects_bad_fields(kwargs: dict[str, Any], words: str) -> None:
    arguments: dict[str, Any] = {"entity_type": "quote", "source": "src", **kwargs}
    with pytest.raises(ValueError, match=words):
        EventMapping(**arguments)


def test_event_mapping_freezes_exclude_fields() -> None:
    mapping = EventMapping("quote", "src", exclude_fields={"a", "b"})  # type: ignore[arg-type]
    assert mapping.exclude_fields == frozenset({"a", "b"})
    assert isinstance(mapping.exclude_fields, frozenset)


@given(st.text(min_size=1, max_size=30))
def test_string_ids_are_their_own_entity_id(value: str) -> None:
    result = outbox(change("insert", {"_id": value}, key={"_id": value}))
    assert result["entityId"] == result["orderingKey"] == value


def test_the_example_in_the_docs_is_what_the_code_produces() -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "publisher.md"
    block = re.search(r"```json\n(.*?)\n```", doc.read_text(encoding="utf-8"), re.DOTALL)
    assert block is not None
    example = json.loads(block.group(1))
    oid = ObjectId("65f0a1b2c3d4e5f6a7b8c9d0")
    mapping = EventMapping(
        "quote",
        "//liberator/shop/quotes",
        version_field="version",
        exclude_fields=frozenset({"internalNotes"}),
    )
    document = outbox(
        change(
            "update",
            {
                "_id": oid,
                "version": 3,
                "customer": "C-17",
                "total": Decimal128("129.90"),
                "status": "purchased",
                "purchasedAt": datetime.datetime(2024, 3, 4, 5, 6, 7, 890000),
                "internalNotes": "...",
                "_event": {
                    "type": "quote.purchased",
                    "correlationId": "checkout-4711",
                    "causationId": "cmd-99",
                    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                },
            },
            token="8265F0A1B2000000012B022C0100296E5A100465F0A1B2C3D4E5F6A7B8C9D00004",
            key={"_id": oid},
            wallTime=datetime.datetime(2024, 3, 4, 5, 6, 7, 912000),
        ),
        mapping,
    )
    message = message_for(document)
    assert message.attributes == example["attributes"]
    assert message.ordering_key == example["orderingKey"]
    assert json.loads(message.data) == example["data"]


def test_entity_id_of_renders_the_id_as_events_carry_it() -> None:
    mapping = EventMapping(
        entity_type="quote", source="//liberator/db/quotes", id_field="quoteId", version_field="v"
    )
    oid = ObjectId("64b000000000000000000000")
    assert entity_id_of({"quoteId": "Q-1"}, mapping) == "Q-1"
    assert entity_id_of({"quoteId": oid}, mapping) == str(oid)
    assert entity_id_of({"quoteId": 42}, mapping) == "42"
    assert version_of({"quoteId": "Q-1", "v": 3}, mapping) == "3"
    assert version_of({"quoteId": "Q-1"}, mapping) is None
    assert (
        version_of({"v": 3}, EventMapping(entity_type="quote", source="//s", id_field="_id"))
        is None
    )


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({}, "no id field 'quoteId'"),
        ({"quoteId": None}, "no id field 'quoteId'"),
        ({"quoteId": ""}, "id field 'quoteId' is an empty string"),
        ({"quoteId": "x" * 2000}, "ordering key"),
    ],
)
def test_entity_id_of_refuses_an_id_no_event_can_carry(
    document: dict[str, Any], message: str
) -> None:
    mapping = EventMapping(entity_type="quote", source="//liberator/db/quotes", id_field="quoteId")
    with pytest.raises(Unpublishable, match=message):
        entity_id_of(document, mapping)

"""Identities: the entity id of a document that is gone, found again for its delete event.

A MongoDB delete event carries only ``documentKey: {_id}``; without pre-images it does not say
which entity was deleted when entities are keyed by a business id (``LIBERATOR_ID_FIELD``). The
sidecar has seen that document before, in one of two places, and asks them in this order:

1. the outbox: every captured change is stored with ``key`` (the document's ``_id``), so the
   latest event of that key names the entity (index ``liberator_key``: one indexed read);
2. the seed's record ``<collection>.identities``: ``{_id: <document _id>, entity: <id value>}``,
   written by ``liberator seed`` for every document it scanned, so an entity that existed before
   the publisher and never changed since is known too (its ``_id`` is the index).

A document found in neither was never seen by Liberator: its delete stays ``failed`` with a reason
that says so. Real pre-images (``fullDocumentBeforeChange``) win over both and need no look-up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from bson import json_util
from pymongo import ASCENDING, DESCENDING
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError

from liberator_publisher.core.contract import IDENTITY_SUFFIX

__all__ = ["IDENTITY_SUFFIX", "KEY_INDEX", "Identities", "ensure_key_index", "remember_identities"]

KEY_INDEX = [("key", ASCENDING), ("clusterTime", DESCENDING)]
"""Serves the outbox look-up: the latest event of one document key."""
_DUPLICATE_KEY = 11000


def ensure_key_index(outbox: Collection[dict[str, Any]]) -> None:
    """Create the outbox look-up's index (idempotent)."""
    outbox.create_index(KEY_INDEX, name="liberator_key")


class Identities:
    """Looks up the entity id value of a document by its ``_id``."""

    def __init__(
        self, outbox: Collection[dict[str, Any]], seeded: Collection[dict[str, Any]], id_field: str
    ) -> None:
        self.outbox = outbox
        self.seeded = seeded
        self.id_field = id_field

    def find(self, key: Any) -> Any | None:
        """The id field's value last seen for the document ``_id == key``, or None if unseen."""
        found = self.outbox.find_one(
            {"key": key, "entityId": {"$exists": True}},
            {"data": 1, "entityId": 1},
            sort=[("clusterTime", DESCENDING)],
        )
        if found is not None:
            return _id_value(found, self.id_field)
        seeded = self.seeded.find_one({"_id": key}, {"entity": 1})
        if seeded is not None and seeded.get("entity") is not None:
            return seeded["entity"]
        return None


def _id_value(outbox_document: Mapping[str, Any], id_field: str) -> Any:
    """The id value of an outbox event: from its data (the BSON type as stored), else the text."""
    data = outbox_document.get("data")
    if isinstance(data, str):
        try:
            value = json_util.loads(data).get(id_field)
        except (ValueError, TypeError, AttributeError):
            value = None  # edited by hand: the rendered id below still names the entity
        if value is not None:
            return value
    return outbox_document.get("entityId")


def remember_identities(
    seeded: Collection[dict[str, Any]], pairs: Iterable[tuple[Any, Any]]
) -> None:
    """Record ``(document _id, id value)`` pairs; a document recorded before keeps its entry.

    One unordered insert per call, so a seed pays one write per batch, not per entity.
    """
    documents = [{"_id": key, "entity": value} for key, value in pairs if value is not None]
    if not documents:
        return
    try:
        seeded.insert_many(documents, ordered=False)
    except BulkWriteError as error:
        errors = error.details.get("writeErrors", [])
        if not all(e.get("code") == _DUPLICATE_KEY for e in errors):
            raise

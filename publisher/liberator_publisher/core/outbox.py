"""The outbox document: what capture and the seed write, and the relay publishes and marks.

Pure: the type and its states (docs/publisher.md, the outbox).
"""

from __future__ import annotations

import datetime
from typing import Any, Final, Literal, Required, TypedDict

from bson import Timestamp

__all__ = ["FAILED", "PENDING", "PUBLISHED", "OutboxDocument", "OutboxStatus"]

OutboxStatus = Literal["pending", "published", "failed"]
"""An outbox document's state: written pending (or failed, when it cannot be an event), marked
published by the relay once Pub/Sub acknowledged it; a republish sets pending again."""
PENDING: Final = "pending"
PUBLISHED: Final = "published"
FAILED: Final = "failed"


class OutboxDocument(TypedDict, total=False):
    """One document of the outbox collection (docs/publisher.md): what capture and the seed
    write, and what the relay publishes and marks."""

    _id: Required[str]
    """The event id (``ce-id``): from the change's resume token, so a change read twice is
    stored once."""
    status: Required[OutboxStatus]
    entityId: str
    type: str
    operation: str
    """The change stream's operation type (``insert``, ``update``, ``replace``, ``delete``)."""
    attributes: dict[str, str]
    data: str
    """The CloudEvent data: UTF-8 relaxed extended JSON."""
    orderingKey: str
    token: Any
    """The change's resume token (absent for seeded entities)."""
    key: Any
    """The document's ``_id``: a later delete under a business id finds its entity here."""
    capturedAt: datetime.datetime
    attempts: int
    reason: str
    """Why the document is failed."""
    publishedAt: datetime.datetime
    messageId: str
    clusterTime: Timestamp
    """The change's oplog time: orders the sweep among events captured in one batch."""

"""The leader's status record in Redis, which the operator copies into the EntityPublisher.

Key: ``contract.status_key(publisher)`` (``liberator:status:<namespace>/<name>``). Value: one JSON
object (see :class:`StatusRecord`), written by the leader each time it renews the lease, with an
expiry of several TTLs so a record of a publisher that is gone disappears by itself.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from liberator_publisher.contract import status_key

__all__ = ["StatusRecord", "read_status", "write_status"]


@dataclass(frozen=True)
class StatusRecord:
    """What the leader reports (JSON keys are these names in camelCase)."""

    pod: str
    """The leader's pod name."""
    epoch: int
    """Fencing epoch of the leader's term."""
    lastEventTime: str | None  # noqa: N815 - the JSON key
    """RFC 3339 time of the last change captured or published, if any."""
    captureLagSeconds: float  # noqa: N815
    """Age of the last captured change when it reached the outbox."""
    relayLagSeconds: float  # noqa: N815
    """Time from capture to publish ack of the last published event."""
    backlog: int
    """Outbox events still pending."""
    parked: str
    """Why the publisher is parked; empty while it runs."""
    updatedAt: str  # noqa: N815
    """RFC 3339 time of this write."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write_status(redis: Any, publisher: str, record: StatusRecord, ttl_seconds: float) -> None:
    """Store ``record``; it expires after ``ttl_seconds`` unless written again."""
    redis.set(status_key(publisher), record.to_json(), px=max(1, int(ttl_seconds * 1000)))


def read_status(redis: Any, publisher: str) -> dict[str, Any] | None:
    """The current record as a dict, or None when no leader has written one recently."""
    raw = redis.get(status_key(publisher))
    if raw is None:
        return None
    value = json.loads(raw)
    return value if isinstance(value, dict) else None

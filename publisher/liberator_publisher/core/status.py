"""The leader's status record in Redis, which the operator copies into the EntityPublisher.

Key: ``contract.status_key(publisher)`` (``liberator:status:<namespace>/<name>``). Value: one JSON
object (see :class:`StatusRecord`), written by the leader each time it renews the lease, with an
expiry of several TTLs so a record of a publisher that is gone disappears by itself.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from liberator_publisher.core.contract import status_key
from liberator_publisher.core.headroom import Headroom
from liberator_publisher.core.times import rfc3339

__all__ = ["Progress", "StatusRecord", "read_status", "resume_point", "write_status"]


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
    captureSince: str | None  # noqa: N815
    """RFC 3339 time of the capture origin: every write from then on is captured live (earlier
    ones need an EventSeed). None when MongoDB reported no cluster time."""
    updatedAt: str  # noqa: N815
    """RFC 3339 time of this write."""
    paused: bool = False
    """The control record says paused and the relay has stopped: nothing is published."""
    restart: dict[str, Any] | None = None
    """The last restart request carried out: ``{id, doneAt, position, operationTime, pod}``,
    plus ``error`` when capture could not start there (history lost)."""
    restartRejected: dict[str, str] | None = None  # noqa: N815
    """A restart request the leader refused: ``{id, message}``."""
    stalled: dict[str, str] | None = None
    """The publisher does not move (see stall.py): ``{reason, message, since}``, with
    ``since`` the RFC 3339 start of the quiet time. None while it moves."""
    checkpoints: dict[str, dict[str, Any]] | None = None
    """Per loop, ``{movedAt, ageSeconds}``: when its position was last written, and how long
    ago. A loop without a checkpoint is left out."""
    resumePoint: dict[str, Any] | None = None  # noqa: N815
    """The resume-point headroom (headroom.py): ``{status, reason, message, windowSeconds,
    oldestEntry, headroomSeconds: {loop: seconds}}``; status is True (at risk), False or
    Unknown, and the window and oldest entry are None while unknown."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def resume_point(verdict: Headroom) -> dict[str, Any]:
    """The ``resumePoint`` entry of the record."""
    oldest = verdict.oldest
    return {
        "status": verdict.status,
        "reason": verdict.reason,
        "message": verdict.message,
        "windowSeconds": verdict.window_seconds,
        "oldestEntry": rfc3339(oldest.as_datetime()) if oldest is not None else None,
        "headroomSeconds": verdict.loops,
    }


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


@dataclass
class Progress:
    """Live figures the loops update and the status record, metrics and probes read."""

    last_event_time: datetime | None = None
    """Time of the last change captured or published."""
    capture_lag_seconds: float = 0.0
    """Age of the last captured change when it reached the outbox (0 when idle)."""
    relay_lag_seconds: float = 0.0
    """Time from capture to publish ack of the last published event."""
    backlog: int = 0
    """Outbox events pending at the last count."""
    beats: dict[str, float] | None = None
    """Monotonic time each running loop last came round; a stale beat means a stuck loop."""
    published_at: float | None = None
    """Monotonic time of the last publish acknowledgement."""
    pending_since: float | None = None
    """Monotonic time the backlog was last seen turning non-empty; None while it is empty."""
    unsaved_since: float | None = None
    """Monotonic time capture first received a change that its checkpoint does not hold yet;
    None while the checkpoint holds every change received."""

    def backlog_at(self, count: int, now: float) -> None:
        """A new backlog count (taken at monotonic ``now``)."""
        self.backlog = count
        if count == 0:
            self.pending_since = None
        elif self.pending_since is None:
            self.pending_since = now

    def beat(self, loop: str, now: float) -> None:
        if self.beats is None:
            self.beats = {}
        self.beats[loop] = now

    def forget(self, loop: str) -> None:
        if self.beats is not None:
            self.beats.pop(loop, None)

    def event_at(self, moment: datetime) -> None:
        if self.last_event_time is None or moment > self.last_event_time:
            self.last_event_time = moment

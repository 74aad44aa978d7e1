"""The control record: what the operator asks of a publisher's leader.

Key: ``contract.control_key(publisher)`` (``liberator:control:<namespace>/<name>``), next to the
status record. Value: one JSON object, ``{"paused": bool, "restartFrom": {"id": ..., "position":
"now"} | {"id": ..., "time": RFC 3339} | null}``. The operator writes it from the
EntityPublisher's ``spec.paused`` and ``spec.restartFrom`` (no expiry: an operator that is away
must not unpause a publisher); the leader reads it on every lease renewal. Both sides use these
types, so they cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bson import Timestamp

from liberator_publisher.core.contract import control_key
from liberator_publisher.core.errors import LiberatorError
from liberator_publisher.core.times import parse_rfc3339

__all__ = [
    "ControlError",
    "ControlRecord",
    "RestartRequest",
    "parse_restart",
    "parse_time",
    "read_control",
    "write_control",
]

POSITIONS = ("now",)


class ControlError(LiberatorError, ValueError):
    """A control record or restart request that cannot be carried out; names the field."""


@dataclass(frozen=True)
class RestartRequest:
    """Move the capture checkpoint to a position, once per ``id``."""

    id: str
    """Identifies the request: a request whose id was done already does nothing."""
    position: str | None = None
    """``now``: the current cluster time (what ``--reset-checkpoint`` does)."""
    time: str | None = None
    """RFC 3339 time: capture starts there (``startAtOperationTime``, to the second, rounded
    down, so nothing written at or after it is missed)."""

    @property
    def describe(self) -> str:
        return self.position or str(self.time)

    def at(self) -> datetime | None:
        """The requested time (None for a position)."""
        return parse_time(self.time) if self.time is not None else None

    def timestamp(self) -> Timestamp | None:
        """The requested time as a cluster time (None for a position)."""
        moment = self.at()
        return Timestamp(int(moment.timestamp()), 0) if moment is not None else None

    def future_problem(self, now: datetime) -> str | None:
        """Why the request cannot run now (a time in the future), or None."""
        moment = self.at()
        if moment is not None and moment > now:
            return (
                f"spec.restartFrom.time {self.time} is in the future (now "
                f"{now.astimezone(UTC).isoformat(timespec='seconds')}): capture cannot start "
                f"at a change that has not happened; use a past time or position: now"
            )
        return None

    def to_dict(self) -> dict[str, str]:
        out = {"id": self.id}
        if self.position is not None:
            out["position"] = self.position
        if self.time is not None:
            out["time"] = self.time
        return out


def parse_time(value: str) -> datetime:
    """An RFC 3339 time with a zone (``Z`` or an offset); raises :class:`ControlError`."""
    try:
        return parse_rfc3339(value)
    except ValueError:
        raise ControlError(
            f"spec.restartFrom.time {value!r} is not an RFC 3339 time with a zone; "
            f"write e.g. 2026-12-01T10:00:00Z"
        ) from None


def parse_restart(value: Any) -> RestartRequest:
    """A :class:`RestartRequest` from ``spec.restartFrom`` (or the record's ``restartFrom``)."""
    if not isinstance(value, Mapping):
        raise ControlError("spec.restartFrom must be an object {id, position: now} or {id, time}")
    ident = value.get("id")
    if not isinstance(ident, str) or not ident.strip():
        raise ControlError(
            "spec.restartFrom.id is required: a string naming this request (it "
            "runs once per id), e.g. id: recover-1"
        )
    position, when = value.get("position"), value.get("time")
    if (position is None) == (when is None):
        raise ControlError(
            "spec.restartFrom needs exactly one of position (now) or time (RFC 3339)"
        )
    if position is not None and position not in POSITIONS:
        raise ControlError(
            f"spec.restartFrom.position {position!r} is not one of "
            f"{', '.join(POSITIONS)}; for a point in time use time"
        )
    if when is not None:
        if not isinstance(when, str):
            raise ControlError(
                "spec.restartFrom.time must be an RFC 3339 string, e.g. 2026-12-01T10:00:00Z"
            )
        parse_time(when)
    return RestartRequest(id=ident, position=position, time=when)


@dataclass(frozen=True)
class ControlRecord:
    """What the operator asks: pause publishing, and restart capture from a position."""

    paused: bool = False
    """The relay publishes nothing; capture keeps filling the outbox."""
    restartFrom: RestartRequest | None = None  # noqa: N815 - the JSON key
    """The latest restart request, if any."""

    def to_json(self) -> str:
        return json.dumps(
            {
                "paused": self.paused,
                "restartFrom": self.restartFrom.to_dict() if self.restartFrom else None,
            },
            separators=(",", ":"),
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> ControlRecord:
        try:
            value = json.loads(raw)
        except ValueError as error:
            raise ControlError(f"control record is not JSON: {error}") from None
        if not isinstance(value, dict):
            raise ControlError("control record must be a JSON object")
        paused = value.get("paused", False)
        if not isinstance(paused, bool):
            raise ControlError(
                f"control record field 'paused' must be true or false, not {paused!r}"
            )
        restart = value.get("restartFrom")
        return cls(
            paused=paused, restartFrom=parse_restart(restart) if restart is not None else None
        )


def write_control(redis: Any, publisher: str, record: ControlRecord) -> None:
    """Store ``record`` (no expiry)."""
    redis.set(control_key(publisher), record.to_json())


def read_control(redis: Any, publisher: str) -> ControlRecord:
    """The current record; the default (running, no restart) when there is none."""
    raw = redis.get(control_key(publisher))
    return ControlRecord() if raw is None else ControlRecord.from_json(raw)

"""The data plane as the operator sees it: the leader's status record and seed progress in Redis.

The status record is read through the publisher's own type (core/status.py's ``StatusRecord``):
the keys it writes and no others. A field that does not parse is left out rather than failing
the whole status.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import redis

from liberator_publisher.core.contract import seed_key, status_key
from liberator_publisher.core.status import StatusRecord

__all__ = [
    "DataStatus",
    "SeedProgress",
    "connect",
    "parse_seed_progress",
    "parse_status_record",
    "read_seed_progress",
    "read_status",
    "resume_point_condition",
    "resume_point_status",
    "stall_condition",
]


@dataclass(frozen=True)
class DataStatus:
    """What the publisher's leader last reported."""

    leader: str | None = None
    """Pod that holds the lease."""
    epoch: int | None = None
    """Fencing epoch of the lease."""
    lag_seconds: float | None = None
    """Capture lag."""
    backlog: int | None = None
    """Outbox documents not yet published."""
    last_event_time: str | None = None
    """Time of the last published event."""
    parked_reason: str | None = None
    """Why the loops are parked; None when running."""
    capture_since: str | None = None
    """RFC 3339 time of the capture origin: writes from then on are captured live."""
    updated: str | None = None
    """When the leader wrote the record."""
    paused: bool = False
    """The leader's relay stopped for spec.paused."""
    restart: dict[str, Any] | None = None
    """The last restart request the leader carried out (``{id, doneAt, position, ...}``)."""
    restart_rejected: dict[str, Any] | None = None
    """A restart request the leader refused (``{id, message}``)."""
    stalled: dict[str, Any] | None = None
    """Why the leader does not move (``{reason, message, since}``); None while it moves."""
    checkpoints: dict[str, Any] | None = None
    """Per loop, ``{movedAt, ageSeconds}`` of its checkpoint."""
    resume_point: dict[str, Any] | None = None
    """The resume-point headroom: ``{status, reason, message, windowSeconds, oldestEntry,
    headroomSeconds}`` (the publisher's headroom.py)."""


@dataclass(frozen=True)
class SeedProgress:
    """Counts and phase the seed command reports."""

    phase: str | None = None
    """Running, Succeeded or Failed, as the command saw it."""
    seeded: int | None = None
    """Entities published."""
    skipped: int | None = None
    """Entities already in the ledger."""
    failed: int | None = None
    """Documents that could not be published."""
    total: int | None = None
    """Documents to scan."""
    started_at: str | None = None
    """RFC 3339 start."""
    completed_at: str | None = None
    """RFC 3339 end."""


_RECORD_KEYS = frozenset(f.name for f in fields(StatusRecord))


def _pick(record: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        value = record.get(key)
        if value not in (None, ""):
            return value
    return None


def _int(value: Any) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _as_mapping(raw: Mapping[str, Any] | str | bytes | None) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if isinstance(raw, str | bytes):
        try:
            loaded = json.loads(raw)
        except ValueError:
            return {}
        return loaded if isinstance(loaded, dict) else {}
    return raw


def parse_status_record(raw: Mapping[str, Any] | str | bytes | None) -> DataStatus | None:
    """A :class:`DataStatus` from the record as the leader writes it (a JSON object whose keys
    are :class:`StatusRecord`'s fields); None when there is none. A field that does not parse is
    left out; no other key or spelling is guessed at."""
    record = _as_mapping(raw)
    if not record:
        return None

    def get(key: str) -> Any:
        assert key in _RECORD_KEYS, key  # read only what the publisher writes
        return record.get(key)

    return DataStatus(
        leader=_str(get("pod") or None),
        epoch=_int(get("epoch")),
        lag_seconds=_float(get("captureLagSeconds")),
        backlog=_int(get("backlog")),
        last_event_time=_str(get("lastEventTime")),
        parked_reason=_str(get("parked") or None),
        capture_since=_str(get("captureSince")),
        updated=_str(get("updatedAt")),
        paused=get("paused") is True,
        restart=_dict(get("restart")),
        restart_rejected=_dict(get("restartRejected")),
        stalled=_dict(get("stalled")),
        checkpoints=_checkpoints(get("checkpoints")),
        resume_point=_dict(get("resumePoint")),
    )


def stall_condition(data: DataStatus | None) -> tuple[str, str, str]:
    """The ``Stalled`` condition (status, reason, message) from the leader's record: Unknown
    without one (never a False that reads as "moving")."""
    if data is None:
        return (
            "Unknown",
            "NoLeader",
            "no leader's status record: whether the publisher moves "
            "is unknown (see the Publishing condition)",
        )
    if data.parked_reason:
        return "False", "Parked", "the leader is parked (see the Publishing condition)"
    if data.paused:
        return "False", "Paused", "spec.paused is true: nothing is published on purpose"
    if data.stalled:
        reason = str(data.stalled.get("reason") or "Stalled")
        since = data.stalled.get("since")
        message = str(data.stalled.get("message") or "the publisher does not move")
        return "True", reason, f"{message} (since {since})" if since else message
    return "False", "Moving", "the leader captures and publishes"


def resume_point_condition(data: DataStatus | None) -> tuple[str, str, str]:
    """The ``ResumePointAtRisk`` condition (status, reason, message) from the leader's record:
    Unknown without a record or a reading (never a False that reads as "safe")."""
    if data is None:
        return (
            "Unknown",
            "NoLeader",
            "no leader's status record: the resume points' headroom is unknown",
        )
    point = data.resume_point or {}
    status = point.get("status")
    if status not in ("True", "False", "Unknown"):
        return (
            "Unknown",
            "OplogWindowUnknown",
            "the leader reports no resume-point headroom (a sidecar older than this operator?)",
        )
    return (
        str(status),
        str(point.get("reason") or "OplogWindowUnknown"),
        str(point.get("message") or ""),
    )


def resume_point_status(data: DataStatus | None) -> dict[str, Any] | None:
    """``status.resumePoint``: the oplog window, its oldest entry and each loop's headroom, as
    the CRD schema types them (a field that does not parse is left out)."""
    point = data.resume_point if data is not None else None
    if not point:
        return None
    out: dict[str, Any] = {}
    window = _float(point.get("windowSeconds"))
    if window is not None:
        out["windowSeconds"] = window
    if isinstance(point.get("oldestEntry"), str):
        out["oldestEntry"] = point["oldestEntry"]
    loops = point.get("headroomSeconds")
    if isinstance(loops, Mapping):
        headroom = {
            str(k): v for k, v in ((k, _float(v)) for k, v in loops.items()) if v is not None
        }
        if headroom:
            out["headroomSeconds"] = headroom
    return out or None


def _checkpoints(value: Any) -> dict[str, Any] | None:
    """Only loops whose entry has a numeric age: the CRD schema types ``ageSeconds``."""
    if not isinstance(value, Mapping):
        return None
    result: dict[str, Any] = {}
    for loop, entry in value.items():
        age = _float(entry.get("ageSeconds")) if isinstance(entry, Mapping) else None
        if age is not None:
            result[str(loop)] = {"ageSeconds": age, "movedAt": _str(entry.get("movedAt"))}
    return result or None


def _dict(value: Any) -> dict[str, Any] | None:
    return {str(k): v for k, v in value.items()} if isinstance(value, Mapping) and value else None


def parse_seed_progress(raw: Mapping[str, Any] | None) -> SeedProgress | None:
    """A :class:`SeedProgress` from the seed's Redis hash; None when there is none."""
    if not raw:
        return None
    return SeedProgress(
        phase=_str(_pick(raw, "phase")),
        seeded=_int(_pick(raw, "seeded")),
        skipped=_int(_pick(raw, "skipped")),
        failed=_int(_pick(raw, "failed")),
        total=_int(_pick(raw, "total")),
        started_at=_str(_pick(raw, "startedAt", "started_at")),
        completed_at=_str(_pick(raw, "completedAt", "completed_at")),
    )


def connect(url: str) -> redis.Redis:
    """A client with short timeouts: a slow Redis must not stall the operator's timers.

    The status timer's tick holds up an EntityPublisher's deletion until it ends, so a read
    gives up after 1 s (the next tick tries again).
    """
    client: redis.Redis = redis.Redis.from_url(
        url, socket_timeout=1, socket_connect_timeout=1, decode_responses=True
    )
    return client


def read_status(client: redis.Redis, publisher: str) -> DataStatus | None:
    """The status record of ``<namespace>/<name>``: the JSON string the leader writes (a key of
    another type is not the leader's record: None)."""
    try:
        value = client.get(status_key(publisher))
    except redis.ResponseError:  # WRONGTYPE: something else wrote the key
        return None
    return parse_status_record(value if isinstance(value, str | bytes) else None)


def read_seed_progress(client: redis.Redis, seed: str) -> SeedProgress | None:
    return parse_seed_progress(client.hgetall(seed_key(seed)))  # type: ignore[arg-type]

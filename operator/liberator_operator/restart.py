"""``spec.paused`` and ``spec.restartFrom`` as the control record, and the request's outcome.

Pure functions: :func:`control_for` turns the spec (and what the status remembers) into the
record the leader reads; :func:`restart_outcome` turns the leader's report into the
``RestartRejected`` condition and ``status.restart``. The handlers only read and write.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from liberator_operator.datastatus import DataStatus
from liberator_publisher.core.control import (
    ControlError,
    ControlRecord,
    RestartRequest,
    parse_restart,
)

__all__ = ["Outcome", "control_for", "restart_outcome"]


@dataclass(frozen=True)
class Outcome:
    """What the status shows about the restart request."""

    status: str
    """The RestartRejected condition's status: True, False; empty: leave the condition out."""
    reason: str
    message: str
    rejected: dict[str, str] | None = None
    """``status.restartRejected``, kept so a refused id stays refused."""


def _request(spec: Mapping[str, Any]) -> tuple[RestartRequest | None, str | None]:
    raw = spec.get("restartFrom")
    if raw is None:
        return None, None
    try:
        return parse_restart(raw), None
    except ControlError as error:
        return None, str(error)


def control_for(
    spec: Mapping[str, Any], status: Mapping[str, Any], now: datetime
) -> tuple[ControlRecord, Outcome | None]:
    """The control record for ``spec``; with an :class:`Outcome` when the operator itself
    refuses the restart request (then the record carries none)."""
    paused = bool(spec.get("paused"))
    request, invalid = _request(spec)
    if invalid is not None:
        return ControlRecord(paused), _refused(
            str((spec.get("restartFrom") or {}).get("id")), "Invalid", invalid
        )
    if request is None:
        return ControlRecord(paused), None
    prior = status.get("restartRejected") or {}
    if prior.get("id") == request.id:
        return ControlRecord(paused), _refused(
            request.id, str(prior.get("reason") or "Refused"), str(prior.get("message") or "")
        )
    done = status.get("restart") or {}
    problem = request.future_problem(now) if done.get("id") != request.id else None
    if problem is not None:
        return ControlRecord(paused), _refused(request.id, "FutureTime", problem)
    problem = _history_problem(request, status) if done.get("id") != request.id else None
    if problem is not None:
        return ControlRecord(paused), _refused(request.id, "OlderThanOplog", problem)
    return ControlRecord(paused, request), None


def _history_problem(request: RestartRequest, status: Mapping[str, Any]) -> str | None:
    """Why a time older than the oldest oplog entry cannot be restarted from, where the leader
    last reported that entry (``status.resumePoint.oldestEntry``); None where it is unknown."""
    moment = request.at()
    oldest_text = (status.get("resumePoint") or {}).get("oldestEntry")
    if moment is None or not isinstance(oldest_text, str):
        return None
    try:
        oldest = datetime.fromisoformat(oldest_text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment >= oldest:
        return None
    return (
        f"spec.restartFrom.time {request.time} is older than the oldest oplog entry "
        f"({oldest_text}, as the leader last reported it): the changes between are gone; "
        f"use a time at or after it, or position: now, and an EventSeed for the gap"
    )


def _refused(ident: str, reason: str, message: str) -> Outcome:
    text = f"spec.restartFrom {ident!r} refused: {message}; it does not run (set a new id)"
    return Outcome("True", reason, text, {"id": ident, "reason": reason, "message": text})


def restart_outcome(
    spec: Mapping[str, Any],
    refused: Outcome | None,
    data: DataStatus | None,
    done: Mapping[str, Any] | None,
) -> Outcome:
    """The RestartRejected condition from the operator's own check and the leader's report;
    ``done`` is the last request carried out (the leader's, else what the status kept)."""
    if refused is not None:
        return refused
    request, _ = _request(spec)
    if request is None:
        return Outcome("", "", "")
    rejected = data.restart_rejected if data else None
    if rejected and rejected.get("id") == request.id:
        return _refused(request.id, "Refused", str(rejected.get("message")))
    if done and done.get("id") == request.id:
        if done.get("error"):
            return _refused(request.id, "HistoryLost", str(done["error"]))
        return Outcome(
            "False",
            "Done",
            f"restart {request.id!r} ran at {done.get('doneAt')}: capture restarted at "
            f"{done.get('operationTime')} ({done.get('position')})",
        )
    return Outcome(
        "False", "Pending", f"restart {request.id!r} is waiting for the leader to carry it out"
    )

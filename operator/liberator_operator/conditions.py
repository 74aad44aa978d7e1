"""Status conditions of the standard shape (type, status, reason, message, lastTransitionTime).

Pure: :func:`set_condition` returns a new list; ``lastTransitionTime`` moves only when the
status changes, as Kubernetes conventions ask.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from typing import Literal

from liberator_operator.model import Condition

__all__ = [
    "COMPLETE",
    "INJECTING",
    "JOB_CREATED",
    "PUBLISHER_FOUND",
    "PUBLISHING",
    "READY",
    "RESTART_REJECTED",
    "RESUME_POINT_AT_RISK",
    "STALLED",
    "SUBSCRIPTIONS_READY",
    "TOPIC_READY",
    "find",
    "lag_text",
    "now_rfc3339",
    "set_condition",
    "summary_reason",
]

# EntityPublisher
READY = "Ready"
TOPIC_READY = "TopicReady"
SUBSCRIPTIONS_READY = "SubscriptionsReady"
INJECTING = "Injecting"
PUBLISHING = "Publishing"
RESTART_REJECTED = "RestartRejected"
STALLED = "Stalled"
RESUME_POINT_AT_RISK = "ResumePointAtRisk"
# EventSeed
PUBLISHER_FOUND = "PublisherFound"
JOB_CREATED = "JobCreated"
COMPLETE = "Complete"

Status = Literal["True", "False", "Unknown"]


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def find(conditions: Iterable[Condition] | None, type_: str) -> Condition | None:
    for condition in conditions or ():
        if condition.get("type") == type_:
            return condition
    return None


def set_condition(
    conditions: Sequence[Condition] | None,
    type_: str,
    status: Status | bool,
    reason: str,
    message: str,
    *,
    now: str,
    generation: int | None = None,
) -> list[Condition]:
    """``conditions`` with ``type_`` set; other conditions keep their order and content."""
    value: Status = ("True" if status else "False") if isinstance(status, bool) else status
    old = find(conditions, type_)
    changed = old is None or old.get("status") != value
    new: Condition = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now if changed or old is None else old["lastTransitionTime"],
    }
    if generation is not None:
        new["observedGeneration"] = generation
    result = [c for c in conditions or () if c.get("type") != type_]
    index = next((i for i, c in enumerate(conditions or ()) if c.get("type") == type_), len(result))
    result.insert(index, new)
    return result


def summary_reason(conditions: Iterable[Condition] | None, *, paused: bool) -> str:
    """The one word the STATUS column shows: what matters most about the publisher now.

    ``Paused`` first (the user asked for it); then why it is not Ready (a missing Secret, Pub/Sub
    unavailable...), since nothing can publish before that; then why it does not publish
    (``NoSidecar``, ``NoLeader``, ``Parked``...); ``Stalled`` when a leader runs but does not
    move; ``ResumePointAtRisk`` when it moves but a checkpoint nears the oplog's end;
    ``Publishing`` otherwise. ``Unknown`` before the first status check.
    """
    if paused:
        return "Paused"
    ready = find(conditions, READY)
    if ready is not None and ready.get("status") != "True":
        return str(ready.get("reason") or "NotReady")
    publishing = find(conditions, PUBLISHING)
    if publishing is None:
        return "Unknown"
    if publishing.get("status") == "True":
        for type_ in (STALLED, RESUME_POINT_AT_RISK):
            condition = find(conditions, type_)
            if condition is not None and condition.get("status") == "True":
                return type_
        return "Publishing"
    return str(publishing.get("reason") or "NotPublishing")


def lag_text(lag_seconds: float | None) -> str:
    """The LAG column: the leader's capture lag, or ``Unknown`` without a leader's record (never
    a 0 that reads as "up to date")."""
    if lag_seconds is None:
        return "Unknown"
    if lag_seconds < 10:
        return f"{lag_seconds:.1f}s"
    if lag_seconds < 3600:
        return f"{lag_seconds:.0f}s"
    return f"{lag_seconds / 3600:.1f}h"

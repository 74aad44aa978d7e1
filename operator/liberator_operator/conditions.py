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
    "SUBSCRIPTIONS_READY",
    "TOPIC_READY",
    "find",
    "now_rfc3339",
    "set_condition",
]

# EntityPublisher
READY = "Ready"
TOPIC_READY = "TopicReady"
SUBSCRIPTIONS_READY = "SubscriptionsReady"
INJECTING = "Injecting"
PUBLISHING = "Publishing"
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


def set_condition(conditions: Sequence[Condition] | None, type_: str, status: Status | bool,
                  reason: str, message: str, *, now: str, generation: int | None = None,
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

"""Resume-point headroom: how far each checkpoint is from falling off the oplog.

Pure. MongoDB keeps a bounded oplog; a change stream can resume only from a position that is
still in it. The *window* is the time between the oldest and the newest oplog entry; a loop's
*headroom* is the time between its checkpoint's position and the oldest entry. When the headroom
reaches 0 the resume point is lost and the publisher parks (``history_lost``); before that,
:func:`headroom_verdict` says it is at risk once the headroom is below ``margin`` (a fraction)
of the window, which gives an operator the time to make the publisher catch up or grow the oplog.

The verdict is one of three, like a Kubernetes condition:

- ``True`` (``ResumePointAtRisk``): some loop's headroom is below the margin; ``True``
  (``ResumePointLost``) once a headroom is below 0: that resume point is gone, and the loop
  parks (``history_lost``) when it next reads its stream;
- ``False`` (``HeadroomOK``): every checkpointed loop is clear of it;
- ``Unknown`` (``OplogWindowUnknown``): the window cannot be read (no privilege on
  ``local.oplog.rs``, a server without an oplog) or no loop has a position yet. Never False then:
  a resume point is not safe merely because nobody could look.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from bson import Timestamp

__all__ = [
    "AT_RISK",
    "LOST",
    "OK",
    "UNKNOWN",
    "Headroom",
    "OplogWindow",
    "headroom_verdict",
    "token_time",
]

AT_RISK = "ResumePointAtRisk"
LOST = "ResumePointLost"
OK = "HeadroomOK"
UNKNOWN = "OplogWindowUnknown"

_KEYSTRING_TIMESTAMP = "82"
"""A resume token's ``_data`` is hex of a KeyString whose first value is the event's cluster
time: the BSON timestamp's KeyString type byte, then its 8 bytes big-endian."""


@dataclass(frozen=True)
class OplogWindow:
    """The oplog's span, from its oldest and newest entries' timestamps."""

    oldest: Timestamp
    newest: Timestamp

    @property
    def seconds(self) -> float:
        return float(max(0, self.newest.time - self.oldest.time))


@dataclass(frozen=True)
class Headroom:
    """The verdict, with what the status and the metrics show."""

    status: Literal["True", "False", "Unknown"]
    reason: str
    """:data:`AT_RISK`, :data:`OK` or :data:`UNKNOWN`."""
    message: str
    window_seconds: float | None = None
    """The oplog window; None when unknown."""
    oldest: Timestamp | None = None
    """The oldest oplog entry's time; None when unknown."""
    loops: dict[str, float] = field(default_factory=dict)
    """Per checkpointed loop, its headroom in seconds (negative: already lost)."""
    at_risk: tuple[str, ...] = ()
    """The loops whose headroom is below the margin."""


def token_time(token: Mapping[str, Any] | None) -> Timestamp | None:
    """The cluster time a resume token stands for, or None when the token does not say (not a
    token of MongoDB's KeyString form)."""
    data = token.get("_data") if token is not None else None
    if not isinstance(data, str) or len(data) < 18 or not data.startswith(_KEYSTRING_TIMESTAMP):
        return None
    try:
        value = int(data[2:18], 16)
    except ValueError:
        return None
    return Timestamp(value >> 32, value & 0xFFFFFFFF)


def headroom_verdict(
    window: OplogWindow | str, positions: Mapping[str, Timestamp | None], margin: float
) -> Headroom:
    """The verdict for ``positions`` (each loop's checkpoint time; None: no usable position)
    against ``window``, or against the reason the window could not be read (a ``str``).

    ``margin`` is the fraction of the window below which a headroom is at risk (0 < margin < 1).
    """
    if not 0 < margin < 1:
        raise ValueError(f"margin must be between 0 and 1 (exclusive), not {margin!r}")
    if isinstance(window, str):
        return Headroom("Unknown", UNKNOWN, f"the oplog window cannot be read: {window}")
    known = {loop: when for loop, when in positions.items() if when is not None}
    if not known:
        return Headroom(
            "Unknown", UNKNOWN, "no checkpoint with a position yet", window.seconds, window.oldest
        )
    loops = {loop: float(when.time - window.oldest.time) for loop, when in sorted(known.items())}
    floor = margin * window.seconds
    at_risk = tuple(loop for loop, seconds in loops.items() if seconds < floor)
    shown = ", ".join(f"{loop} {seconds:.0f}s" for loop, seconds in loops.items())
    lost = [loop for loop, seconds in loops.items() if seconds < 0]
    if lost:
        return Headroom(
            "True",
            LOST,
            f"the {' and '.join(lost)} checkpoint is older than the oldest oplog entry (headroom "
            f"{shown}): that resume point is gone; recover with an EventSeed and "
            f"spec.restartFrom (docs/operations.md, lost resume point)",
            window.seconds,
            window.oldest,
            loops,
            at_risk,
        )
    if at_risk:
        return Headroom(
            "True",
            AT_RISK,
            f"the {' and '.join(at_risk)} checkpoint is near the oldest oplog entry (headroom "
            f"{shown}; below {margin:.0%} of the {window.seconds:.0f}s oplog window): make the "
            f"publisher catch up (see Stalled and the backlog) or grow the oplog, before the "
            f"resume point is lost",
            window.seconds,
            window.oldest,
            loops,
            at_risk,
        )
    return Headroom(
        "False",
        OK,
        f"headroom {shown} of the {window.seconds:.0f}s oplog window",
        window.seconds,
        window.oldest,
        loops,
    )

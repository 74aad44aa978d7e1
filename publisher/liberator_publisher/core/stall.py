"""The stall rule: a publisher that looks alive but does not move.

Pure: :func:`stall_verdict` takes what the loops last reported (monotonic times, in seconds) and
says whether the publisher is stalled, and why. The leader evaluates it on every status write;
the status record carries the verdict, and the operator turns it into the ``Stalled`` condition.

Two cases, as the runbook names them:

- ``NothingPublished``: events are pending in the outbox, yet none has been acknowledged by
  Pub/Sub for ``stall_after`` seconds (Pub/Sub unreachable, a topic deleted, every key paused
  on errors).
- ``CaptureNotMoving``: the change stream delivered changes, yet the capture checkpoint has not
  moved past them for ``stall_after`` seconds (outbox writes failing, a loop retrying forever).

A paused or parked publisher is not stalled: those say so themselves, and the fix differs.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CAPTURE_NOT_MOVING", "NOTHING_PUBLISHED", "STALL_REASONS", "Stall", "stall_verdict"]

NOTHING_PUBLISHED = "NothingPublished"
CAPTURE_NOT_MOVING = "CaptureNotMoving"
STALL_REASONS = (NOTHING_PUBLISHED, CAPTURE_NOT_MOVING)
"""The ``reason`` label of ``liberator_stalled`` and of the ``Stalled`` condition."""


@dataclass(frozen=True)
class Stall:
    """Why the publisher is stalled."""

    reason: str
    """One of :data:`STALL_REASONS`."""
    message: str
    """What is wrong and where to look."""
    seconds: float
    """How long it has been stalled for (from the start of the quiet time, not from the
    moment it crossed ``stall_after``)."""


def stall_verdict(
    *,
    now: float,
    stall_after: float,
    backlog: int,
    pending_since: float | None,
    published_at: float | None,
    unsaved_since: float | None,
    paused: bool = False,
    parked: bool = False,
) -> Stall | None:
    """The stall, or None when the publisher moves (or waits for a reason of its own).

    ``pending_since``: when the backlog was last seen turning non-empty (None while empty);
    ``published_at``: the last publish acknowledgement (None before the first);
    ``unsaved_since``: when capture first received a change it has not checkpointed yet (None
    when the checkpoint holds every change seen). All are monotonic times, like ``now``.
    """
    if paused or parked:
        return None
    if unsaved_since is not None and now - unsaved_since >= stall_after:
        quiet = now - unsaved_since
        return Stall(
            CAPTURE_NOT_MOVING,
            f"capture received changes {quiet:.0f}s ago and its checkpoint has not "
            f"moved since: changes reach the stream but not the outbox; look at the "
            f"capture loop's warnings in the leader's log (outbox writes failing?)",
            quiet,
        )
    if backlog > 0 and pending_since is not None:
        start = pending_since if published_at is None else max(pending_since, published_at)
        quiet = now - start
        if quiet >= stall_after:
            return Stall(
                NOTHING_PUBLISHED,
                f"{backlog} event(s) pending and nothing published for {quiet:.0f}s; "
                f"look at liberator_publish_errors_total and the relay's warnings in "
                f"the leader's log (Pub/Sub unreachable, topic missing, permission "
                f"denied?)",
                quiet,
            )
    return None

"""What the leader reports: its status record in Redis (core/status.py) and the gauges read with
it (stall, checkpoint ages, oplog headroom).

The MongoDB figures behind the report (backlog, checkpoint marks, oplog window) are read by
:meth:`Report.poll`, which the runner calls in a thread of its own so that a slow MongoDB never
delays a lease renewal; :meth:`Report.write` uses the last figures read and never waits on
MongoDB.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from pymongo import MongoClient

from liberator_publisher.core.headroom import OplogWindow, headroom_verdict
from liberator_publisher.core.outbox import PENDING
from liberator_publisher.core.settings import Settings
from liberator_publisher.core.stall import stall_verdict
from liberator_publisher.core.status import Progress, StatusRecord, resume_point, write_status
from liberator_publisher.core.times import rfc3339
from liberator_publisher.sidecar.control import Control
from liberator_publisher.sidecar.metrics import Metrics
from liberator_publisher.sidecar.term import Park, Term
from liberator_publisher.state.checkpoint import Checkpoints, Mark, oplog_window

__all__ = ["Report"]


@dataclass(kw_only=True)
class Report:
    """The leader's status record and gauges, and the MongoDB figures they show."""

    settings: Settings
    mongo: MongoClient[dict[str, Any]]
    redis_client: redis.Redis
    checkpoints: Checkpoints
    metrics: Metrics
    progress: Progress
    control: Control
    marks: dict[str, Mark] = field(default_factory=dict, init=False)
    """Each loop's checkpoint: when it moved, and to what time (read with the backlog)."""
    window: OplogWindow | str = field(default="not read yet", init=False)
    """The oplog window, or why it cannot be read (read with the backlog)."""

    def poll(self) -> None:
        """Read the backlog, the checkpoint marks and the oplog window from MongoDB."""
        self._count_backlog()
        with contextlib.suppress(Exception):  # MongoDB away: the ages grow from the last read
            self.marks = self.checkpoints.marks()
        try:
            self.window = oplog_window(self.mongo)
        except Exception as e:  # MongoDB away: unknown until it answers
            self.window = f"MongoDB did not answer: {e}"

    def _count_backlog(self) -> None:
        try:
            outbox = self.mongo[self.settings.database][self.settings.outbox_collection]
            count = int(outbox.count_documents({"status": PENDING}, maxTimeMS=5000))
        except Exception:
            return
        self.progress.backlog_at(count, time.monotonic())
        self.metrics.backlog.set(count)

    def write(
        self, *, epoch: int, term: Term | None, parked: Park | None, capture_since: str | None
    ) -> None:
        """Write the status record of the lease's ``epoch`` and set the gauges read with it."""
        p, control = self.progress, self.control
        paused = control.paused and (term is None or term.relay_paused.is_set())
        now, wall = time.monotonic(), datetime.now(UTC)
        stalled = self._stalled(now, wall, parked)
        ages = self._ages(wall)
        headroom = headroom_verdict(
            self.window,
            {loop: mark.position for loop, mark in self.marks.items()},
            self.settings.resume_margin_percent / 100,
        )
        self.metrics.set_headroom(headroom)
        record = StatusRecord(
            pod=self.settings.pod_name,
            epoch=epoch,
            lastEventTime=rfc3339(p.last_event_time) if p.last_event_time else None,
            captureLagSeconds=round(p.capture_lag_seconds, 3),
            relayLagSeconds=round(p.relay_lag_seconds, 3),
            backlog=p.backlog,
            parked=parked.message if parked else "",
            captureSince=capture_since,
            paused=paused,
            restart=control.restart_done,
            restartRejected=control.restart_rejected,
            stalled=stalled,
            checkpoints=ages or None,
            resumePoint=resume_point(headroom),
            updatedAt=rfc3339(wall),
        )
        write_status(
            self.redis_client,
            self.settings.publisher,
            record,
            ttl_seconds=max(60.0, self.settings.lease_ttl_seconds * 6),
        )

    def _stalled(self, now: float, wall: datetime, parked: Park | None) -> dict[str, Any] | None:
        """The stall rule's verdict, as the status record shows it (and its gauge)."""
        p = self.progress
        stall = stall_verdict(
            now=now,
            stall_after=self.settings.stall_after_seconds,
            backlog=p.backlog,
            pending_since=p.pending_since,
            published_at=p.published_at,
            unsaved_since=p.unsaved_since,
            paused=self.control.paused,
            parked=parked is not None,
        )
        self.metrics.set_stalled(stall.reason if stall else "")
        if stall is None:
            return None
        return {
            "reason": stall.reason,
            "message": stall.message,
            "since": rfc3339(wall - timedelta(seconds=stall.seconds)),
        }

    def _ages(self, wall: datetime) -> dict[str, dict[str, Any]]:
        """Each loop's checkpoint: when it last moved and how long ago (and its gauge)."""
        ages: dict[str, dict[str, Any]] = {}
        for loop, mark in self.marks.items():
            age = max(0.0, (wall - mark.moved_at).total_seconds())
            ages[loop] = {"movedAt": rfc3339(mark.moved_at), "ageSeconds": round(age, 1)}
            self.metrics.checkpoint_age.labels(loop=loop).set(age)
        return ages

"""The operator's control record as the leader applies it: ``spec.paused`` and ``spec.restartFrom``.

The runner reads the record on each tick; when Redis or the record fail, the last good one
stands. A restart request runs once: the one carried out is kept with the checkpoints in MongoDB
(``restart_done``, read again by each new term), a refused one is remembered by its id
(``restart_rejected``), and the status record reports both.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from pymongo.database import Database

from liberator_publisher.core.control import (
    ControlError,
    ControlRecord,
    RestartRequest,
    read_control,
)
from liberator_publisher.core.status import Progress
from liberator_publisher.core.times import now_rfc3339, rfc3339
from liberator_publisher.runtime.logs import fields
from liberator_publisher.sidecar.term import Park
from liberator_publisher.state.checkpoint import Checkpoints, cluster_time

__all__ = ["Control"]

# The runner's logger: these lines were the runner's, and log queries may name it.
log = logging.getLogger("liberator_publisher.sidecar.runner")


@dataclass(kw_only=True)
class Control:
    """The control record last read, and what became of its restart requests."""

    redis_client: redis.Redis
    publisher: str
    pod: str
    checkpoints: Checkpoints
    database: Database[dict[str, Any]]
    progress: Progress
    paused: bool = field(default=False, init=False)
    """spec.paused, from the control record: the relay publishes nothing."""
    restart_done: dict[str, Any] | None = field(default=None, init=False)
    """The last restart request carried out (persisted in MongoDB, read when leading)."""
    restart_rejected: dict[str, str] | None = field(default=None, init=False)
    """A restart request refused, ``{id, message}``."""
    restarted: bool = field(default=False, init=False)
    """Whether the current term began by carrying out a restart request."""
    _record: ControlRecord = field(default_factory=ControlRecord, init=False)
    _error: str = field(default="", init=False)

    def read(self) -> None:
        """The operator's control record; the last good one when Redis or the record fail."""
        try:
            self._record = read_control(self.redis_client, self.publisher)
            self._error = ""
        except ControlError as error:
            if str(error) != self._error:
                log.warning("ignoring a malformed control record", extra=fields(error=str(error)))
            self._error = str(error)
        except redis.RedisError:
            pass  # the lease renewal says so
        if self._record.paused != self.paused:
            log.info(
                "paused" if self._record.paused else "unpaused: publishing what is pending",
                extra=fields(paused=self._record.paused),
            )
            if not self._record.paused and self.progress.pending_since is not None:
                self.progress.pending_since = time.monotonic()  # the pause was no stall
        self.paused = self._record.paused

    def begin_term(self, epoch: int) -> None:
        """Before a term starts (its epoch claimed): carry out a new restart request."""
        self.restart_done = self.checkpoints.restart_done()
        self.restarted = self._restart_if_due(epoch)

    def restart_wanted(self) -> RestartRequest | None:
        """A new restart request that can run (one that cannot is refused here)."""
        request = self._due()
        if request is None or self._refuse(request):
            return None
        return request

    def note_park(self, park: Park) -> None:
        """The term parked: if it began with a restart, say why the request's position failed."""
        if (
            self.restarted
            and self.restart_done is not None
            and park.code == "history_lost"
            and park.loop == "capture"
        ):
            # The position the request chose is gone too (older than the oplog window).
            self.restart_done = {
                **self.restart_done,
                "error": (
                    f"capture could not start at {self.restart_done.get('position')}: "
                    f"{park.message}; the time is older than the oplog window: "
                    "choose a later time, or position: now after an EventSeed"
                ),
            }

    def _due(self) -> RestartRequest | None:
        request = self._record.restartFrom
        if request is None:
            return None
        if self.restart_done is not None and self.restart_done.get("id") == request.id:
            return None
        if self.restart_rejected is not None and self.restart_rejected.get("id") == request.id:
            return None
        return request

    def _restart_if_due(self, epoch: int) -> bool:
        """Carry out a new restart request before the term starts; whether one ran."""
        request = self.restart_wanted()
        if request is None:
            return False
        when = request.timestamp() or cluster_time(self.database)
        if when is None:
            self._refuse(
                request,
                "MongoDB reports no cluster time (not a replica set?): cannot "
                "take spec.restartFrom.position: now",
            )
            return False
        done = {
            "id": request.id,
            "doneAt": now_rfc3339(),
            "position": request.describe,
            "operationTime": rfc3339(when.as_datetime()),
            "pod": self.pod,
        }
        self.checkpoints.restart(epoch, self.pod, when, done)
        self.restart_done, self.restart_rejected = done, None
        log.warning(
            "restarted capture from the requested position (spec.restartFrom)",
            extra=fields(**done),
        )
        return True

    def _refuse(self, request: RestartRequest, problem: str | None = None) -> bool:
        """Refuse ``request`` (reported in the status record) if it cannot run; whether so."""
        problem = problem or request.future_problem(datetime.now(UTC))
        if problem is None:
            return False
        log.warning("restart request refused", extra=fields(id=request.id, error=problem))
        self.restart_rejected = {"id": request.id, "message": problem}
        return True

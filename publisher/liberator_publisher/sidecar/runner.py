"""``liberator publish``: the sidecar that runs capture and relay under one leader lease.

The main thread keeps the lease (acquire, renew, release) and the status record. While this
replica leads, a :class:`Term` runs the capture and relay loops in two threads. The loops stop by
themselves when the lease is about to run out, so a paused or cut-off leader never outlives its
lease; checkpoint writes carry the term's epoch and a stale one is refused.
"""

from __future__ import annotations

import logging
import threading
import time
from types import FrameType
from typing import Any

import redis
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import PyMongoError
from redis.backoff import NoBackoff
from redis.retry import Retry

from liberator_publisher.core.settings import Settings
from liberator_publisher.core.status import Progress
from liberator_publisher.core.times import rfc3339
from liberator_publisher.runtime import logs
from liberator_publisher.runtime.health import Health, HealthServer
from liberator_publisher.sidecar.control import Control
from liberator_publisher.sidecar.leader import Lease
from liberator_publisher.sidecar.metrics import Metrics
from liberator_publisher.sidecar.outbox import ensure_indexes
from liberator_publisher.sidecar.report import Report
from liberator_publisher.sidecar.sink import Preloader
from liberator_publisher.sidecar.term import Park, Term, TermContext
from liberator_publisher.state.checkpoint import (
    LOOPS,
    CheckpointError,
    Checkpoints,
    FencedError,
    cluster_time,
)
from liberator_publisher.state.identity import ensure_key_index

__all__ = ["EXIT_CONFIG", "EXIT_FATAL", "EXIT_UNREACHABLE", "Sidecar", "record_origin"]

log = logging.getLogger("liberator_publisher.sidecar.runner")

EXIT_CONFIG = 2
"""A missing or malformed variable."""
EXIT_UNREACHABLE = 1
"""MongoDB could not be reached (or refused the credentials) at start."""
EXIT_FATAL = 3
"""Parked on a lost stream position, under ``--exit-on-fatal``."""
CONNECT_TIMEOUT_SECONDS = 10.0
STUCK_AFTER_SECONDS = 120.0
BACKLOG_EVERY_SECONDS = 5.0


def record_origin(checkpoints: Checkpoints, database: Database[dict[str, Any]]) -> None:
    """Record the cluster time now as the origin, while capture has no checkpoint yet."""
    try:
        if not checkpoints.load("capture").empty:
            return
    except CheckpointError:
        return  # a damaged checkpoint is not empty: the leader parks on it, naming the field
    when = cluster_time(database)
    if when is None:
        log.warning(
            "MongoDB reports no cluster time (not a replica set?): a first capture "
            "starts where its stream opens"
        )
        return
    checkpoints.record_origin(when)


class Sidecar:
    """The process: HTTP, the lease loop, and the current term."""

    def __init__(
        self,
        settings: Settings,
        mongo: MongoClient[dict[str, Any]],
        checkpoints: Checkpoints,
        *,
        exit_on_fatal: bool,
    ) -> None:
        self.settings = settings
        self.mongo = mongo
        self.database: Database[dict[str, Any]] = mongo[settings.database]
        self.checkpoints = checkpoints
        self.exit_on_fatal = exit_on_fatal
        ttl = settings.lease_ttl_seconds
        self.tick = max(0.1, ttl / 4)
        # Stop loops this long before the lease's deadline: one tick to notice, one second
        # for the loops to come round (getMore waits at most max_await_ms).
        self.margin = min(ttl * 0.6, self.tick + 1.0)
        self.loop_margin = min(ttl * 0.2, 0.5)
        # No client-side retries: a renewal must fail fast, and the lease loop retries itself.
        timeout = max(0.1, min(self.tick / 2, 2.0))
        self.redis = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self.lease = Lease(self.redis, settings.publisher, settings.pod_name, ttl)
        self.metrics = Metrics()
        self.progress = Progress()
        self.term: Term | None = None
        self.capture_since: str | None = None
        self.parked: Park | None = None
        self.wake = threading.Event()
        self.shutdown = threading.Event()
        self.http: HealthServer | None = None
        self._redis_down_logged = False
        self._reset_seen = threading.Event()
        self.preloader = Preloader()
        self.control = Control(
            redis_client=self.redis,
            publisher=settings.publisher,
            pod=settings.pod_name,
            checkpoints=checkpoints,
            database=self.database,
            progress=self.progress,
        )
        self.report = Report(
            settings=settings,
            mongo=mongo,
            redis_client=self.redis,
            checkpoints=checkpoints,
            metrics=self.metrics,
            progress=self.progress,
            control=self.control,
        )

    # -- probes --

    def start_http(self) -> None:
        self.http = HealthServer(self.settings.http_port, self.health, self.metrics.render)
        self.http.start()

    def health(self) -> Health:
        now = time.monotonic()
        stuck = [
            f"{loop} loop stuck for {now - beat:.0f}s"
            for loop, beat in (self.progress.beats or {}).items()
            if now - beat > STUCK_AFTER_SECONDS
        ]
        if stuck:
            return Health(alive=False, ready=True, detail="; ".join(stuck))
        if self.parked:
            return Health(alive=True, ready=True, detail=f"parked: {self.parked.message}")
        role = f"leader epoch {self.lease.epoch}" if self.term else "standby"
        return Health(alive=True, ready=True, detail=f"ok ({role})")

    # -- the lease loop --

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.shutdown.set()
        self.wake.set()

    def run(self) -> int:
        log.info(
            "publisher started",
            extra=_fields(
                publisher=self.settings.publisher,
                pod=self.settings.pod_name,
                collection=f"{self.settings.database}.{self.settings.collection}",
                topic=self.settings.topic,
                http_port=self.settings.http_port,
            ),
        )
        self._warn_if_no_collection()
        code = 0
        last_backlog = 0.0
        while not self.shutdown.is_set():
            self._tick()
            if self.parked and self.exit_on_fatal:
                log.error("exiting on a fatal stream error (--exit-on-fatal)")
                code = EXIT_FATAL
                break
            if self.term is not None and time.monotonic() - last_backlog > BACKLOG_EVERY_SECONDS:
                last_backlog = time.monotonic()
                # In a thread of its own: a slow MongoDB must never delay a lease renewal.
                threading.Thread(
                    target=self._poll_mongo, args=(bool(self.parked),), daemon=True
                ).start()
            self.wake.wait(self._next_tick())
            self.wake.clear()
        self._end_term(drain_seconds=10.0)
        try:
            self.lease.release()
        except Exception as error:
            log.warning("could not release the lease", extra=_fields(error=str(error)))
        self.metrics.leader.set(0)
        if self.http is not None:
            self.http.stop()
        self.mongo.close()
        log.info("publisher stopped", extra=_fields(exit_code=code))
        return code

    def _warn_if_no_collection(self) -> None:
        """A typo in LIBERATOR_COLLECTION looks like a quiet collection: say so once."""
        s = self.settings
        try:
            exists = s.collection in self.database.list_collection_names(
                filter={"name": s.collection}
            )
        except PyMongoError:
            return  # MongoDB away: the loops will say so
        if not exists:
            log.warning(
                "the collection %s.%s does not exist yet: its changes are captured from "
                "when it is created; check LIBERATOR_COLLECTION for a typo",
                s.database,
                s.collection,
                extra=_fields(collection=f"{s.database}.{s.collection}"),
            )

    def _next_tick(self) -> float:
        """A standby tries again just after the holder's lease expires (a failover then waits
        for the TTL only, not a tick more); otherwise every tick."""
        free_in = self.lease.free_in
        if self.term is None and free_in is not None:
            return max(0.01, min(self.tick, free_in + 0.005))
        return self.tick

    def _tick(self) -> None:
        try:
            if self.term is None:
                self._try_lead()
            else:
                self._keep_leading()
            self._redis_down_logged = False
        except redis.RedisError as error:
            if not self._redis_down_logged:
                log.warning("Redis unreachable", extra=_fields(error=str(error)))
                self._redis_down_logged = True
        if self.term is not None and self.lease.remaining() < self.margin:
            log.warning(
                "could not renew the lease in time; stopping the loops",
                extra=_fields(epoch=self.lease.epoch),
            )
            self._end_term(drain_seconds=0.5)
            self.lease.forget()

    def _try_lead(self) -> None:
        epoch = self.lease.try_acquire()
        if epoch:
            self.preloader.start("taking the lease")  # in the background, while _prepare runs
            self._lead(epoch)
        elif self.lease.free_in is not None and self.lease.free_in < self.lease.ttl_seconds / 2:
            # The holder renews every quarter TTL, so half a TTL left means it has missed
            # renewals and may be gone: import now, and the takeover will not wait for it.
            self.preloader.start("the holder has missed renewals")

    def _lead(self, epoch: int, *, again: bool = False) -> None:
        """Start a term under the lease just taken, or kept (``again``: after a reset or a
        restart request)."""
        prepared = self._prepare(epoch, again=again)
        if prepared is None:
            return
        epoch = prepared
        log.info("leading", extra=_fields(epoch=epoch, pod=self.settings.pod_name))
        self.parked = None  # a new term (after a reset and restart of the loops) starts unparked
        self.progress.unsaved_since = None  # an old term's unsaved change is not this one's
        self.metrics.lead(epoch)
        self.term = Term(
            TermContext(
                settings=self.settings,
                database=self.database,
                checkpoints=self.checkpoints,
                metrics=self.metrics,
                progress=self.progress,
                lease_left=self.lease.remaining,
                loop_margin=self.loop_margin,
                paused=lambda: self.control.paused,
                wake=self.wake,
            ),
            epoch,
        )
        self.term.start()
        self._write_status()

    def _prepare(self, epoch: int, *, again: bool) -> int | None:
        """Claim the checkpoints for the term and ready MongoDB; the term's epoch, or None
        when the lease was given up. A kept lease takes a new epoch, so a loop of the old term
        that outlived its join can no longer move a checkpoint."""
        try:
            floor = max(self.checkpoints.epoch(loop) for loop in LOOPS)
            if epoch <= floor or again:
                if not again:
                    log.warning(
                        "the epoch counter is behind the checkpoints (Redis lost its "
                        "data?); advancing it",
                        extra=_fields(epoch=epoch, checkpoint_epoch=floor),
                    )
                epoch = self.lease.advance_epoch(max(floor, epoch))
                if not epoch:
                    return None
            self.checkpoints.claim(epoch, self.settings.pod_name)
            self.control.read()
            self.control.begin_term(epoch)
            record_origin(self.checkpoints, self.database)  # after a reset: from now on
            origin = self.checkpoints.origin()
            self.capture_since = rfc3339(origin.as_datetime()) if origin else None

            outbox = self.database[self.settings.outbox_collection]
            ensure_indexes(outbox)
            ensure_key_index(outbox)
        except FencedError:
            log.warning(
                "a newer epoch owns the checkpoints; giving the lease up",
                extra=_fields(epoch=epoch),
            )
            self.lease.release()
            return None
        except Exception as error:
            log.warning(
                "cannot prepare MongoDB for leading; giving the lease up",
                extra=_fields(error=f"{type(error).__name__}: {error}"),
            )
            self.lease.release()
            return None
        return epoch

    def _keep_leading(self) -> None:
        term = self.term
        assert term is not None
        self.control.read()
        if term.parked and not self.parked:
            self.parked = term.parked
            self.control.note_park(term.parked)
        request = self.control.restart_wanted()
        if request is not None:
            log.warning(
                "restart requested; moving the checkpoints",
                extra=_fields(request=request.to_dict(), was=self.parked and self.parked.message),
            )
            self._end_term(drain_seconds=0.5)
            self._lead(self.lease.epoch, again=True)
            return
        if term.parked and self._reset_seen.is_set():
            # The documented recovery ran (--reset-checkpoint): start again from "now". This is
            # an explicit operator action, never an automatic restart of a lost stream.
            log.warning(
                "checkpoints were reset; resuming from the current position",
                extra=_fields(was=self.parked and self.parked.message),
            )
            self._reset_seen.clear()
            self._end_term(drain_seconds=0.5)
            self._lead(self.lease.epoch, again=True)
            return
        if term.fenced or (term.finished() and not term.parked):
            self._end_term(drain_seconds=0.5)
            self.lease.release()
            return
        if not self.lease.renew():
            log.warning(
                "lost the lease to another replica; stopping the loops",
                extra=_fields(holder=self.lease.holder()),
            )
            self._end_term(drain_seconds=0.5)
            return
        self._write_status()

    def _end_term(self, drain_seconds: float) -> None:
        term, self.term = self.term, None
        self.metrics.stand_by()
        if term is None:
            return
        term.stop(drain_seconds)
        term.join(timeout=drain_seconds + 5.0)

    def _write_status(self) -> None:
        self.report.write(
            epoch=self.lease.epoch,
            term=self.term,
            parked=self.parked,
            capture_since=self.capture_since,
        )

    def _poll_mongo(self, parked: bool) -> None:
        """Count the backlog; while parked, notice a reset of the checkpoints."""
        if parked:
            try:
                if all(self.checkpoints.epoch(loop) == 0 for loop in LOOPS):
                    self._reset_seen.set()
                    self.wake.set()
            except Exception:
                pass  # MongoDB away: look again next time
        self.report.poll()


def _fields(**values: Any) -> dict[str, Any]:
    return logs.fields(**values)

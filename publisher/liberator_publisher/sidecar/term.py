"""One leadership term: the capture and relay loops of the lease's current epoch, started and
stopped together.

A term gets what it needs of its process as a :class:`TermContext` (the settings, the database,
the lease's time left, whether spec.paused holds) and reports back through its own fields
(``parked``, ``fenced``) and the context's ``wake`` event; it never reaches into the runner.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pymongo.database import Database

from liberator_publisher.core.settings import Settings
from liberator_publisher.core.status import Progress
from liberator_publisher.runtime import logs
from liberator_publisher.sidecar.capture import Capture, CaptureSettings
from liberator_publisher.sidecar.metrics import Metrics
from liberator_publisher.sidecar.relay import Relay, RelaySettings
from liberator_publisher.sidecar.sink import Sink, SinkSettings
from liberator_publisher.sidecar.source import classify
from liberator_publisher.state.checkpoint import Checkpoints, FencedError, Position
from liberator_publisher.state.identity import IDENTITY_SUFFIX, Identities

__all__ = ["Term", "TermContext"]

log = logging.getLogger(__name__)


def _fields(**values: Any) -> dict[str, Any]:
    return logs.fields(**values)


@dataclass(frozen=True)
class TermContext:
    """What a term needs of its process."""

    settings: Settings
    database: Database[dict[str, Any]]
    checkpoints: Checkpoints
    metrics: Metrics
    progress: Progress
    lease_left: Callable[[], float]
    """Seconds the lease surely has left."""
    loop_margin: float
    """The loops stop this long before the lease's deadline."""
    paused: Callable[[], bool]
    """Whether spec.paused holds now (the control record, read by the runner)."""
    wake: threading.Event
    """Set to wake the runner: the term parked or was fenced."""


@dataclass
class _Loop:
    name: str
    thread: threading.Thread


@dataclass(frozen=True)
class Park:
    """Why a term stopped for good, until an operator acts (docs/operations.md)."""

    loop: str
    """The loop that could not go on: ``capture`` or ``relay``."""
    code: str
    """A stable reason, the ``liberator_parked{reason}`` label (say ``history_lost``)."""
    reason: str
    """What happened, for people."""

    @property
    def message(self) -> str:
        """``<loop>: <reason>``, as the status record and ``/healthz`` show it."""
        return f"{self.loop}: {self.reason}"


class Term:
    """One leadership term: the capture and relay loops, stopped together."""

    def __init__(self, context: TermContext, epoch: int) -> None:
        self.context = context
        self.epoch = epoch
        s = context.settings
        self.sink = Sink(SinkSettings(project=s.pubsub_project, topic=s.topic))
        self.stopping = threading.Event()
        self.drain_seconds = 1.0
        self.parked: Park | None = None
        self.fenced = False
        self._loops: list[_Loop] = []
        self._relay_loop: Relay | None = None
        self.relay_paused = threading.Event()
        """Set once the relay stopped for spec.paused (in-flight acks drained)."""

    def active(self) -> bool:
        """Whether the loops may go on: not stopped, and the lease surely still ours."""
        return not self.stopping.is_set() and self.context.lease_left() > self.context.loop_margin

    def start(self) -> None:
        for name, body in (("relay", self._relay), ("capture", self._capture)):
            thread = threading.Thread(
                target=self._guard, args=(name, body), name=f"liberator-{name}", daemon=True
            )
            self._loops.append(_Loop(name, thread))
            thread.start()

    def stop(self, drain_seconds: float) -> None:
        self.drain_seconds = drain_seconds
        self.stopping.set()

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for loop in self._loops:
            loop.thread.join(max(0.0, deadline - time.monotonic()))
        alive = [loop.name for loop in self._loops if loop.thread.is_alive()]
        if alive:
            log.warning("loops did not stop in time", extra=_fields(loops=alive))
        self.sink.close()
        return not alive

    def finished(self) -> bool:
        return all(not loop.thread.is_alive() for loop in self._loops)

    def _capture(self) -> None:
        sc, s = self.context, self.context.settings
        outbox = sc.database[s.outbox_collection]
        identities = Identities(
            outbox, sc.database[s.collection + IDENTITY_SUFFIX], s.mapping().id_field
        )
        Capture(
            entities=sc.database[s.collection],
            outbox=outbox,
            identities=identities,
            checkpoints=sc.checkpoints,
            mapping=s.mapping(),
            metrics=sc.metrics,
            progress=sc.progress,
            epoch=self.epoch,
            pod=s.pod_name,
            settings=CaptureSettings(batch_size=s.batch_size, max_await_ms=s.max_await_ms),
            on_written=self._nudge_relay,
        ).run(self.active)

    def _nudge_relay(self) -> None:
        relay = self._relay_loop
        if relay is not None:
            relay.nudge()

    def _relay(self) -> None:
        sc, s = self.context, self.context.settings
        while self.active():
            if sc.paused():
                self.relay_paused.set()
                self.stopping.wait(0.2)  # spec.paused: publish nothing; capture goes on
                continue
            self.relay_paused.clear()
            relay = self._relay_loop = Relay(
                outbox=sc.database[s.outbox_collection],
                checkpoints=sc.checkpoints,
                sink=self.sink,
                metrics=sc.metrics,
                progress=sc.progress,
                epoch=self.epoch,
                pod=s.pod_name,
                settings=RelaySettings(
                    batch_size=s.batch_size,
                    max_await_ms=s.max_await_ms,
                    sweep_interval_seconds=s.sweep_interval_seconds,
                    pending_age_seconds=s.pending_age_seconds,
                ),
            )
            relay.run(lambda: self.active() and not sc.paused(), lambda: self.drain_seconds)
            self._relay_loop = None
            if self.active() and sc.paused():
                # Resume with a sweep of everything pending, in capture order: a pause of any
                # length (even past the oplog window) then loses nothing.
                sc.checkpoints.save("relay", self.epoch, Position(), s.pod_name)
                log.info(
                    "paused: publishing nothing until spec.paused is false",
                    extra=_fields(epoch=self.epoch),
                )

    def _guard(self, name: str, body: Callable[[], None]) -> None:
        """Run a loop; retry transient errors with backoff, park on a lost position."""
        backoff = 0.5
        while self.active():
            started = time.monotonic()
            try:
                body()
                return
            except FencedError as error:
                log.warning(
                    "a newer leader owns the checkpoints; stopping",
                    extra=_fields(loop=name, error=str(error)),
                )
                self.fenced = True
                self.context.metrics.fenced.inc()
                self.stopping.set()
                self.context.wake.set()
                return
            except Exception as error:
                lost = classify(error)
                if lost is not None:
                    self._park(name, lost.code, str(lost))
                    return
                if time.monotonic() - started > 30:
                    backoff = 0.5
                log.warning(
                    "loop failed; retrying",
                    exc_info=log.isEnabledFor(logging.DEBUG),
                    extra=_fields(
                        loop=name, error=f"{type(error).__name__}: {error}", retry_in=backoff
                    ),
                )
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _park(self, loop: str, code: str, reason: str) -> None:
        if self.parked is None:
            self.parked = Park(loop, code, reason)
            log.error("PARKED: %s", self.parked.message, extra=_fields(loop=loop, reason=code))
            self.context.metrics.set_parked(code)
        self.stopping.set()
        self.context.wake.set()

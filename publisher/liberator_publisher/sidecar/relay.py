"""Relay: pending outbox events to Pub/Sub, in order per entity, with a sweep as a safety net.

A change stream on the outbox (inserts, updates and replaces whose looked-up document is
``pending``) feeds the sink without waiting for each ack: the sink batches many keys per
request and keeps each key in order, and flow control blocks when too much is in flight. Acks
come back through a queue; each is marked ``published`` (in bulk), and then the checkpoint moves
to the end of the longest stretch of stream batches whose events are all settled.

When a publish fails, the sink pauses that ordering key. The failed event and everything after
it for the key wait in order, and are sent again after a backoff (``Sink.resume``); other keys
go on. An event Pub/Sub can never take is marked ``failed`` with a reason and skipped.
"""

from __future__ import annotations

import logging
import queue
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo.collection import Collection

from liberator_publisher.core.backoff import KeyBackoff
from liberator_publisher.core.contract import (
    BATCH_SIZE,
    MAX_AWAIT_MS,
    PENDING_AGE_SECONDS,
    SWEEP_INTERVAL_SECONDS,
)
from liberator_publisher.core.message import Message, Unpublishable, message_for
from liberator_publisher.core.outbox import PENDING
from liberator_publisher.core.status import Progress
from liberator_publisher.core.watermark import Stretch, Watermark
from liberator_publisher.runtime.logs import fields
from liberator_publisher.sidecar.metrics import Metrics
from liberator_publisher.sidecar.outbox import (
    PIPELINE,
    mark_failed,
    mark_published,
    pending,
)
from liberator_publisher.sidecar.sink import KeyPausedError, Sink
from liberator_publisher.sidecar.source import ChangeReader
from liberator_publisher.state.checkpoint import Checkpoints, Position, cluster_time

__all__ = ["Relay", "RelaySettings"]

log = logging.getLogger(__name__)

_RECENT = 100_000  # ids published this term, to skip stream events the sweep already sent
_PERMANENT = ("InvalidArgument",)  # publish errors a retry cannot fix


@dataclass(frozen=True)
class RelaySettings:
    """Tuning of the relay loop."""

    batch_size: int = BATCH_SIZE
    """Most stream events handled at once."""
    max_await_ms: int = MAX_AWAIT_MS
    """How long one ``getMore`` waits on a quiet outbox."""
    sweep_interval_seconds: float = SWEEP_INTERVAL_SECONDS
    """How often the sweep looks for pending events the stream did not bring."""
    pending_age_seconds: float = PENDING_AGE_SECONDS
    """How old a pending event must be before the sweep sends it."""
    checkpoint_interval_seconds: float = 1.0
    """Least time between relay checkpoint writes."""
    max_backoff_seconds: float = 10.0
    """Longest wait before a failed ordering key is tried again."""
    gather_ms: int = 25
    """After a short batch, how long the reader waits before its next ``getMore`` unless
    :meth:`Relay.nudge` says capture wrote (fewer, larger batches; see ``ChangeReader``)."""
    quiet_pause_ms: int = 2000
    """Longest pause between empty ``getMore`` s on a server that answers them at once: capture's
    inserts nudge the reader, so only outbox changes made by others wait this long."""


@dataclass
class _Flight:
    event_id: str
    message: Message
    seq: int
    captured_at: datetime | None
    stretch: Stretch[Position] | None
    sent: float = 0.0


class Relay:
    """One run of the relay loop for one leader term."""

    def __init__(
        self,
        *,
        outbox: Collection[dict[str, Any]],
        checkpoints: Checkpoints,
        sink: Sink,
        metrics: Metrics,
        progress: Progress,
        epoch: int,
        pod: str,
        settings: RelaySettings,
    ) -> None:
        self.outbox = outbox
        self.checkpoints = checkpoints
        self.sink = sink
        self.metrics = metrics
        self.progress = progress
        self.epoch = epoch
        self.pod = pod
        self.settings = settings
        self._acks: queue.SimpleQueue[tuple[_Flight, Future[str]]] = queue.SimpleQueue()
        self._inflight: dict[str, _Flight] = {}
        self._paused: KeyBackoff[_Flight] = KeyBackoff(max_seconds=settings.max_backoff_seconds)
        self._watermark: Watermark[Position] = Watermark()
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._outstanding: dict[str, int] = {}  # per key: sent, neither acked nor failed yet
        self._seq = 0
        self._saved: Position | None = None
        self._saved_at = 0.0
        self._reader: ChangeReader | None = None

    # -- the loop --

    def run(self, active: Callable[[], bool], drain_seconds: Callable[[], float]) -> None:
        """Relay until ``active()`` turns false, then wait up to ``drain_seconds()`` for acks."""
        position = self.checkpoints.load("relay")
        self._saved = position
        first = position.empty
        if first:
            # The stream starts where the first sweep's view of the outbox ends: an event
            # captured before this cluster time is found by the sweep, a later one by the stream
            # (one found by both goes out once). Opened at "whenever the aggregate runs", events
            # written in between would wait for the periodic sweep and go out after later ones.
            when = cluster_time(self.outbox.database)
            if when is not None:
                position = Position(operation_time=when)
        reader = ChangeReader(
            self.outbox,
            position,
            pipeline=PIPELINE,
            batch_size=self.settings.batch_size,
            max_await_ms=self.settings.max_await_ms,
            gather_ms=self.settings.gather_ms,
            quiet_pause_ms=self.settings.quiet_pause_ms,
            name="relay-reader",
        )
        self._reader = reader
        reader.start()
        try:
            if first:
                # First start: events captured before the stream's start are only in the outbox.
                self.sweep(min_age_seconds=0.0, limit=None)
            last_sweep = time.monotonic()
            while active():
                now = time.monotonic()
                self.progress.beat("relay", now)
                busy = bool(self._inflight)
                batch = reader.next_batch(timeout=0.02 if busy else 0.5)
                # Stopped (or paused) while waiting: leave the batch; the checkpoint is before it.
                if batch is not None and active():
                    self._handle(batch.changes, batch.position)
                self.settle()
                self._retry_paused()
                if now - last_sweep >= self.settings.sweep_interval_seconds:
                    self.sweep(
                        self.settings.pending_age_seconds, limit=self.settings.batch_size * 4
                    )
                    last_sweep = time.monotonic()
                self._checkpoint(force=False)
        finally:
            reader.stop()
            self._drain(drain_seconds())
            self.progress.forget("relay")
            reader.join(timeout=2.0)

    def nudge(self) -> None:
        """New pending events were written to the outbox: read the stream now."""
        reader = self._reader
        if reader is not None:
            reader.nudge()

    def _drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self._inflight and time.monotonic() < deadline:
            waiting = [
                f for f in self._inflight.values() if f.message.ordering_key not in self._paused
            ]
            if not waiting:
                break
            time.sleep(0.02)
            self.settle()
        self.settle()
        self._checkpoint(force=True)

    # -- sending --

    def _handle(self, changes: list[dict[str, Any]], position: Position) -> None:
        stretch = self._watermark.begin(position)
        for change in changes:
            document = change.get("fullDocument")
            if change.get("operationType") == "update":
                key = change.get("documentKey")
                document = (
                    self.outbox.find_one({"_id": key.get("_id")})
                    if isinstance(key, Mapping)
                    else None
                )
            # The lookup may show a newer state than the event: only pending is sent.
            if not isinstance(document, Mapping) or document.get("status") != PENDING:
                continue
            event_id = str(document.get("_id"))
            if event_id in self._inflight:
                continue
            if change.get("operationType") == "insert" and event_id in self._recent:
                continue  # the sweep sent it already; an update to pending is a republish
            self._send(document, stretch)

    def sweep(self, min_age_seconds: float, limit: int | None) -> int:
        """Send pending events older than ``min_age_seconds`` that are not in flight."""
        sent = 0
        for document in pending(self.outbox, min_age_seconds, limit, self.settings.batch_size):
            if str(document.get("_id")) in self._inflight:
                continue
            self._send(document, None)
            sent += 1
            if sent % self.settings.batch_size == 0:
                self.settle()  # keep memory bounded on a large backlog
                self.progress.beat("relay", time.monotonic())  # a long sweep is not stuck
        if sent:
            log.info(
                "sweep sent pending events", extra=fields(events=sent, min_age=min_age_seconds)
            )
        return sent

    def _send(self, document: Mapping[str, Any], stretch: Stretch[Position] | None) -> None:
        event_id = str(document.get("_id"))
        try:
            message = message_for(document)
        except Unpublishable as error:
            self._fail(event_id, error.reason)
            return
        captured = document.get("capturedAt")
        self._seq += 1
        flight = _Flight(
            event_id,
            message,
            self._seq,
            captured if isinstance(captured, datetime) else None,
            stretch,
        )
        if stretch is not None:
            Watermark.opened(stretch)
        self._inflight[event_id] = flight
        if self._paused.hold(message.ordering_key, flight):
            return  # waits behind the failed one, in order
        self._publish(flight)

    def _publish(self, flight: _Flight) -> None:
        key = flight.message.ordering_key
        self._outstanding[key] = self._outstanding.get(key, 0) + 1
        flight.sent = time.monotonic()
        future = self.sink.publish(
            flight.message.data, flight.message.attributes, flight.message.ordering_key
        )
        future.add_done_callback(lambda done: self._acks.put((flight, done)))

    # -- acks --

    def settle(self) -> None:
        """Take the acks that came back: mark published, pause failed keys, move the mark."""
        published: list[tuple[_Flight, str]] = []
        while True:
            try:
                flight, future = self._acks.get_nowait()
            except queue.Empty:
                break
            key = flight.message.ordering_key
            left = self._outstanding.get(key, 1) - 1
            if left > 0:
                self._outstanding[key] = left
            else:
                self._outstanding.pop(key, None)
            error = future.exception()
            if error is None:
                published.append((flight, future.result()))
            else:
                self._failed_publish(flight, error)
        if published:
            self._mark_published(published)
        self._watermark.advance()

    def _mark_published(self, published: list[tuple[_Flight, str]]) -> None:
        now = datetime.now(UTC)
        mark_published(self.outbox, [(f.event_id, message_id) for f, message_id in published], now)
        done = time.monotonic()
        for flight, _ in published:
            self._settled(flight)
            self._recent[flight.event_id] = None
            self._paused.succeeded(flight.message.ordering_key)
            self.metrics.publish_latency.observe(max(0.0, done - flight.sent))
            if flight.captured_at is not None:
                captured = flight.captured_at
                if captured.tzinfo is None:
                    captured = captured.replace(tzinfo=UTC)
                lag = max(0.0, (now - captured).total_seconds())
                self.progress.relay_lag_seconds = lag
                self.metrics.relay_lag.set(lag)
                self.progress.event_at(captured)
        while len(self._recent) > _RECENT:
            self._recent.popitem(last=False)
        self.metrics.published.inc(len(published))
        self.progress.published_at = done

    def _settled(self, flight: _Flight) -> None:
        if self._inflight.get(flight.event_id) is flight:
            del self._inflight[flight.event_id]
        if flight.stretch is not None:
            Watermark.settled(flight.stretch)
            flight.stretch = None

    def _failed_publish(self, flight: _Flight, error: BaseException) -> None:
        kind = type(error).__name__
        if kind in _PERMANENT:
            self._settled(flight)
            self._fail(flight.event_id, f"Pub/Sub refused the message: {error}")
            self._pause(flight.message.ordering_key, None, error)  # later ones failed with it
            return
        self._pause(flight.message.ordering_key, flight, error)

    def _pause(self, key: str, flight: _Flight | None, error: BaseException) -> None:
        # A key the sink paused before we saw why (say, in an earlier run) resumes at once.
        own = not isinstance(error, KeyPausedError)
        wait = self._paused.pause(key, time.monotonic(), own=own)
        if wait is not None and own:
            self.metrics.publish_errors.inc()
            log.warning(
                "publish failed; the entity's events wait and retry in order",
                extra=fields(
                    ordering_key=key, error=f"{type(error).__name__}: {error}", retry_in=wait
                ),
            )
        if flight is not None:
            self._paused.hold(key, flight)

    def _retry_paused(self) -> None:
        # A key is retried only once every message it had in flight came back: those fail too
        # (the sink paused the key), and all of them must go out again in their first order.
        for key, flights in self._paused.due(time.monotonic(), self._outstanding.__contains__):
            self.sink.resume(key)
            for flight in sorted(flights, key=lambda f: f.seq):
                self._publish(flight)

    def _fail(self, event_id: str, reason: str) -> None:
        self._recent[event_id] = None  # the stream may bring it again: handled once
        mark_failed(self.outbox, event_id, reason)
        self.metrics.failed.labels(stage="relay").inc()
        log.warning(
            "event cannot be published; marked failed",
            extra=fields(event_id=event_id, reason=reason),
        )

    # -- checkpoint --

    def _checkpoint(self, *, force: bool) -> None:
        mark = self._watermark.position
        if mark is None or mark == self._saved:
            return
        if (
            not force
            and time.monotonic() - self._saved_at < self.settings.checkpoint_interval_seconds
        ):
            return
        self.checkpoints.save("relay", self.epoch, mark, self.pod)
        self._saved, self._saved_at = mark, time.monotonic()

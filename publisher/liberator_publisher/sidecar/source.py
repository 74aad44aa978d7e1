"""The change source: a thin seam around pymongo's ``watch()``, read ahead in a thread.

A reader thread pulls the change stream (batched, with ``max_await_time_ms`` so an idle stream
costs one cheap ``getMore`` per wait and no CPU) into a bounded queue, while the loop consuming
it writes or publishes the previous batch. Errors the stream cannot survive are classified as
:class:`StreamLostError` so the caller parks instead of silently restarting from "now".
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bson import Timestamp
from pymongo.collection import Collection
from pymongo.errors import OperationFailure

from liberator_publisher.core.errors import LiberatorError
from liberator_publisher.state.checkpoint import CheckpointError, Position

__all__ = [
    "END_OPERATIONS",
    "PARK_REASONS",
    "Batch",
    "ChangeReader",
    "ChangeSource",
    "StreamLostError",
    "classify",
    "rejects_token",
]

# Server error codes that mean the stream's position is gone for good.
_LOST_CODES = {
    286: "history_lost",  # ChangeStreamHistoryLost: the resume point fell off the oplog
    280: "stream_fatal",  # ChangeStreamFatalError
    260: "resume_token_rejected",  # InvalidResumeToken
    136: "history_lost",  # CappedPositionLost (older servers)
}
_LOST_PHRASES = (
    ("resume point may no longer be in the oplog", "history_lost"),
    ("resume token was not found", "history_lost"),
    ("resume token", "resume_token_rejected"),
    ("resumeafter", "resume_token_rejected"),
    ("startafter", "resume_token_rejected"),
)
PARK_REASONS = (
    "history_lost",
    "resume_token_rejected",
    "stream_fatal",
    "invalidated",
    "checkpoint_invalid",
)
"""Every :attr:`StreamLostError.code`: the ``reason`` label of ``liberator_parked``."""
END_OPERATIONS = frozenset({"invalidate", "drop", "rename", "dropDatabase"})
"""Change events after which a collection's stream ends."""

RECOVERY = (
    "recovery: run an EventSeed for this publisher, then 'liberator publish "
    "--reset-checkpoint' in any replica; the parked leader then captures again from the "
    "current position by itself (no restart needed)"
)


class StreamLostError(LiberatorError, RuntimeError):
    """The stream cannot resume from its checkpoint; the publisher must park."""

    def __init__(self, code: str, cause: str) -> None:
        super().__init__(f"{cause} ({code}); {RECOVERY}")
        self.code = code
        """Short label (``history_lost``, ``invalidated``, ``resume_token_rejected`` ...)."""
        self.cause = cause
        """What happened, in words."""


def classify(error: BaseException) -> StreamLostError | None:
    """A :class:`StreamLostError` when ``error`` means the position is gone for good, else None."""
    if isinstance(error, StreamLostError):
        return error
    if isinstance(error, CheckpointError):
        return StreamLostError("checkpoint_invalid", str(error))
    if not isinstance(error, OperationFailure):
        return None
    message = str(error)
    code = _LOST_CODES.get(error.code or 0)
    labels = error.details.get("errorLabels", []) if error.details else []
    if code is None and "NonResumableChangeStreamError" in labels:
        code = "stream_fatal"
    if code is None:
        lowered = message.lower()
        code = next((label for phrase, label in _LOST_PHRASES if phrase in lowered), None)
    if code is None:
        return None
    return StreamLostError(code, f"the change stream failed: {message} (code {error.code})")


# Errors that say nothing about the token: the connection, the replica set, or access.
_NOT_ABOUT_THE_TOKEN = {6, 7, 13, 18, 50, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436}


def rejects_token(error: OperationFailure) -> bool:
    """Whether a failure to *open* a stream from a token means the server refuses that token.

    MongoDB says so with codes 260/280/286; other servers (the emulator among them) fail with
    their own errors. Transient and access errors are excluded, so they are retried instead.
    """
    if classify(error) is not None:
        return True
    labels = error.details.get("errorLabels", []) if error.details else []
    if "ResumableChangeStreamError" in labels or "RetryableWriteError" in labels:
        return False
    return (error.code or 0) not in _NOT_ABOUT_THE_TOKEN


class ChangeSource(Protocol):
    """What the loops read changes from: :class:`ChangeReader`, or a stand-in in tests of what
    the emulator cannot produce (post-batch tokens on a quiet stream, server error codes)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def join(self, timeout: float) -> None: ...

    def next_batch(self, timeout: float) -> Batch | None: ...


@dataclass(frozen=True)
class Batch:
    """Changes read so far, with the position after the last of them."""

    changes: list[dict[str, Any]]
    """In stream order; empty for a heartbeat."""
    position: Position
    """Where to resume after these changes (also moves on a quiet stream)."""


class ChangeReader:
    """Reads one collection's change stream in a daemon thread; ``next_batch`` hands it over."""

    def __init__(
        self,
        collection: Collection[dict[str, Any]],
        position: Position,
        *,
        pipeline: Sequence[Mapping[str, Any]] = (),
        full_document: str | None = None,
        batch_size: int = 500,
        max_await_ms: int = 500,
        gather_ms: int = 0,
        quiet_pause_ms: int | None = None,
        name: str = "reader",
    ) -> None:
        """``gather_ms``: after a ``getMore`` that brought fewer than ``batch_size`` changes, wait
        this long (or until :meth:`nudge`) before the next, so changes that trickle in come in
        fewer, larger batches: fewer ``getMore`` round trips, and larger writes downstream.

        ``quiet_pause_ms``: the longest pause on a quiet stream whose server answers an empty
        ``getMore`` at once (default ``max_await_ms``); only worth raising when something calls
        :meth:`nudge` on a new change, so a quiet spell does not delay the first event.
        """
        self._collection = collection
        self._position = position
        self._pipeline = [dict(stage) for stage in pipeline]
        self._full_document = full_document
        self._batch_size = batch_size
        self._max_await_ms = max_await_ms
        self._gather = gather_ms / 1000
        self._quiet_pause = (max_await_ms if quiet_pause_ms is None else quiet_pause_ms) / 1000
        self._nudged = threading.Event()
        self._queue: queue.Queue[tuple[str, Any, Position | None]] = queue.Queue(
            maxsize=batch_size * 2
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name=f"liberator-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._nudged.set()

    def nudge(self) -> None:
        """Cut the current (or next) pause short: there is probably something to read."""
        self._nudged.set()

    def _pause(self, seconds: float) -> None:
        if seconds > 0 and self._nudged.wait(seconds):
            self._nudged.clear()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def next_batch(self, timeout: float) -> Batch | None:
        """Up to ``batch_size`` changes (waiting at most ``timeout`` for the first), or None.

        Raises :class:`StreamLostError`, or the error that ended the reader.
        """
        try:
            first = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        items = [first]
        while len(items) < self._batch_size:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        changes: list[dict[str, Any]] = []
        position: Position | None = None
        for kind, value, after in items:
            if kind == "error":
                if changes:  # hand over what came before; the error stays for the next call
                    self._requeue(("error", value, None))
                    break
                raise value
            if kind == "change":
                changes.append(value)
            position = after
        assert position is not None
        return Batch(changes, position)

    def _requeue(self, item: tuple[str, Any, Position | None]) -> None:
        # Only the reader thread puts, and it stopped after its error: there is room.
        self._queue.put(item)

    def _put(self, item: tuple[str, Any, Position | None]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _open(self) -> Any:
        options: dict[str, Any] = {
            "batch_size": self._batch_size,
            "max_await_time_ms": self._max_await_ms,
        }
        if self._full_document:
            options["full_document"] = self._full_document
        if self._position.token is not None:
            options["resume_after"] = self._position.token
        elif self._position.operation_time is not None:
            options["start_at_operation_time"] = self._position.operation_time
        try:
            stream = self._collection.watch(self._pipeline, **options)
        except OperationFailure as error:
            if self._position.token is not None and rejects_token(error):
                # A server that says why (286: the token fell off the oplog) keeps its reason.
                lost = classify(error)
                if lost is not None:
                    raise lost from error
                raise StreamLostError(
                    "resume_token_rejected",
                    f"the server refused to resume the change stream from the "
                    f"checkpoint's token: {error}",
                ) from error
            raise
        opened_at = getattr(stream, "_start_at_operation_time", None)
        if (
            self._position.empty
            and stream.resume_token is None
            and isinstance(opened_at, Timestamp)
        ):
            # No token yet (the server sent no post-batch token): the cluster time at which the
            # stream opened is a position to resume from, so nothing made from now on is lost.
            # pymongo keeps it only in this attribute (a session would expose it, but the
            # emulator has no sessions); without it the position stays empty until an event.
            self._position = Position(operation_time=opened_at)
        return stream

    def _read(self) -> None:
        try:
            with self._open() as stream:
                wait = self._max_await_ms / 1000
                quiet = 0
                trip = 0  # changes taken from the current getMore's batch
                while not self._stop.is_set():
                    asked = time.monotonic()
                    change = stream.try_next()
                    token = stream.resume_token
                    after = Position(token=token) if token is not None else self._position
                    if change is None:
                        trip = 0
                        # Quiet: a heartbeat, with the post-batch token when the server sends one.
                        if not self._put(("idle", None, after)):
                            return
                        # A server that answers an empty getMore at once (the emulator ignores
                        # maxAwaitTimeMS) would make this a busy loop: wait here instead,
                        # briefly at first so a burst right after a quiet spell is not delayed.
                        took = time.monotonic() - asked
                        if wait - took > wait / 2:
                            self._pause(min(self._quiet_pause - took, 0.01 * 2**quiet))
                            quiet = min(quiet + 1, 10)
                        continue
                    quiet = 0
                    trip += 1
                    # The last change of a short batch: let more accumulate before asking again.
                    last = not _buffered(stream)
                    gather = last and trip < self._batch_size
                    trip = 0 if last else trip
                    ending = change.get("operationType")
                    if ending in END_OPERATIONS:
                        why = (
                            f"the change stream ended with a {ending!r} event (the collection "
                            f"was dropped or renamed)"
                        )
                        self._put(("error", StreamLostError("invalidated", why), None))
                        return
                    if not self._put(("change", change, after)):
                        return
                    if gather:
                        self._pause(self._gather)
        except Exception as error:
            self._put(("error", classify(error) or error, None))


def _buffered(stream: Any) -> bool:
    """Whether changes of the last ``getMore`` are still buffered in the stream's cursor.

    pymongo exposes this only privately; if that changes, the answer is True (never pause).
    """
    has_next = getattr(getattr(stream, "_cursor", None), "_has_next", None)
    return bool(has_next()) if callable(has_next) else True

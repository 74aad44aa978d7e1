"""Publishing to Pub/Sub: many ordering keys in one request, in order per key.

Google's client batches each ordering key apart and keeps one batch per key in flight. A live
stream over many entities then sends about one message per request, and most of the client's
and the server's CPU goes to requests (docs/benchmarks.md, "One request, many keys"). This
publisher queues the messages of every key and sends them in few requests, gathered for a short
while. Order per key holds because a key's messages are queued in ``publish()`` order and a key
is in at most one request at a time: its next messages wait until that request is answered.

Failures follow Google's client, so callers handle both alike:

- a message that fails (after the retries) pauses its key: the messages queued behind it, and
  any published for it later, fail with :class:`KeyPausedError` until
  :meth:`OrderedPublisher.resume`;
- a request the server refuses as a whole (``InvalidArgument``) is sent again one message per
  request, so only the message at fault fails and the rest of the batch goes out;
- the empty key is unordered: its failures pause nothing.

``publish()`` blocks while the messages or bytes not yet answered are over their limits (flow
control), so a fast source cannot grow memory without bound.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from liberator_publisher.core.errors import LiberatorError

__all__ = ["KeyPausedError", "OrderedPublisher", "PublishLimits"]

_PERMANENT = "InvalidArgument"  # a request the server refuses as a whole; retrying cannot help


class KeyPausedError(LiberatorError, RuntimeError):
    """A message for a key paused by an earlier failure; :meth:`OrderedPublisher.resume` it."""


@dataclass(frozen=True)
class PublishLimits:
    """How messages are gathered into requests and how many may wait for an answer."""

    max_messages: int = 1000
    """Most messages in one request (Pub/Sub accepts 1,000)."""
    max_bytes: int = 9_000_000
    """Most bytes of messages in one request (Pub/Sub accepts 10 MB); a larger message goes
    alone."""
    max_latency_seconds: float = 0.01
    """How long a short batch waits for more messages before it is sent. While a request is in
    flight the next batch fills anyway."""
    max_in_flight_messages: int = 2000
    """Flow control: ``publish()`` blocks beyond this many messages not yet answered."""
    max_in_flight_bytes: int = 64 * 1024 * 1024
    """Flow control: ``publish()`` blocks beyond this many bytes not yet answered."""
    timeout_seconds: float = 60.0
    """Total time one request is retried before its messages fail."""
    max_requests: int = 1
    """Requests in flight at once. Two never carry the same ordering key, so each key stays in
    order; messages without a key go in any of them. One is the least work for the server; a
    bulk load over few keys (the seed) gains from more."""

    def __post_init__(self) -> None:
        # A limit of 0 would start no sending thread, or admit no message: publish() would hang.
        whole = {
            "max_messages": (self.max_messages, 1, 1000),
            "max_bytes": (self.max_bytes, 1, 10_000_000),
            "max_in_flight_messages": (self.max_in_flight_messages, 1, None),
            "max_in_flight_bytes": (self.max_in_flight_bytes, 1, None),
            "max_requests": (self.max_requests, 1, 64),
        }
        for name, (value, least, most) in whole.items():
            if value < least or (most is not None and value > most):
                span = f"from {least} to {most}" if most is not None else f"at least {least}"
                raise ValueError(f"PublishLimits.{name} must be {span}, got {value}")
        for name, seconds in (
            ("max_latency_seconds", self.max_latency_seconds),
            ("timeout_seconds", self.timeout_seconds),
        ):
            if not seconds >= 0 or seconds == float("inf"):
                raise ValueError(
                    f"PublishLimits.{name} must be a finite number of seconds >= 0, got {seconds}"
                )


@dataclass
class _Queued:
    message: Any  # google.pubsub_v1.PubsubMessage
    size: int
    future: Future[str]

    @property
    def key(self) -> str:
        return str(self.message.ordering_key)


class OrderedPublisher:
    """Publishes to one topic through ``client`` (a ``pubsub_v1.PublisherClient``)."""

    def __init__(self, client: Any, topic_path: str, limits: PublishLimits) -> None:
        from google.api_core import retry as retries  # noqa: PLC0415
        from google.pubsub_v1 import PubsubMessage  # noqa: PLC0415

        self._api = client.api  # the generated client: one call per request, no batching
        self._message = PubsubMessage
        self._retry = retries.Retry(
            initial=0.1, maximum=5.0, multiplier=2.0, timeout=limits.timeout_seconds
        )
        self.topic_path = topic_path
        self.limits = limits
        self._lock = threading.Condition()
        self._queue: deque[_Queued] = deque()
        self._paused: set[str] = set()
        self._waiting = 0  # messages queued or in flight
        self._waiting_bytes = 0
        self._closing = False
        self._busy: set[str] = set()  # keys with a request in flight
        self._threads = [
            threading.Thread(target=self._run, name=f"pubsub-publisher-{n}", daemon=True)
            for n in range(limits.max_requests)
        ]
        for thread in self._threads:
            thread.start()

    def publish(self, data: bytes, attributes: dict[str, str], ordering_key: str) -> Future[str]:
        """Queue one message; the future gives its message id once the server has it."""
        message = self._message(data=data, attributes=attributes, ordering_key=ordering_key)
        size = len(data) + len(ordering_key) + sum(len(k) + len(v) for k, v in attributes.items())
        future: Future[str] = Future()
        future.set_running_or_notify_cancel()
        limits = self.limits
        with self._lock:
            if self._closing:
                raise RuntimeError("the publisher is closed")
            if ordering_key in self._paused:
                future.set_exception(_paused(ordering_key))
                return future
            # A message larger than the byte limit waits until nothing else is in flight.
            while self._waiting and (
                self._waiting >= limits.max_in_flight_messages
                or self._waiting_bytes + size > limits.max_in_flight_bytes
            ):
                self._lock.wait()
            if self._closing:  # closed while this call waited: nothing would send it
                raise RuntimeError("the publisher is closed")
            self._queue.append(_Queued(message, size, future))
            self._waiting += 1
            self._waiting_bytes += size
            self._lock.notify_all()
        return future

    def resume(self, ordering_key: str) -> None:
        """Let a paused key publish again; a no-op for a key that is not paused."""
        with self._lock:
            self._paused.discard(ordering_key)

    def close(self) -> None:
        """Send what is queued, wait for the answers, and stop the threads."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        for thread in self._threads:
            thread.join()

    # -- the sending threads --

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if batch:
                self._send(batch)

    def _next_batch(self) -> list[_Queued] | None:
        """The next request's messages (empty if all were failed for a paused key), or None
        once closed and drained. Taken in queue order, leaving the messages of keys that
        another request carries: they follow once it is answered."""
        limits = self.limits
        with self._lock:
            while not self._sendable():
                if self._closing and not self._queue:
                    return None
                self._lock.wait()
            # Let a short batch fill for a moment (each publish() wakes this wait).
            deadline = time.monotonic() + limits.max_latency_seconds
            while len(self._queue) < limits.max_messages and not self._closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
            batch: list[_Queued] = []
            failed: list[_Queued] = []
            left_behind: deque[_Queued] = deque()
            size = 0
            while self._queue:
                head = self._queue.popleft()
                if len(batch) >= limits.max_messages or (
                    batch and size + head.size > limits.max_bytes
                ):
                    left_behind.append(head)
                    break
                if head.key in self._paused:
                    failed.append(head)
                elif head.key in self._busy:
                    left_behind.append(head)
                else:
                    batch.append(head)
                    size += head.size
            left_behind.extend(self._queue)
            self._queue = left_behind
            self._busy.update(queued.key for queued in batch if queued.key)
        self._settle(failed, None)
        return batch

    def _sendable(self) -> bool:
        """Whether a message waits that a request may take now (or fail, for a paused key)."""
        return any(
            not queued.key or queued.key not in self._busy or queued.key in self._paused
            for queued in self._queue
        )

    def _send(self, batch: list[_Queued]) -> None:
        try:
            self._request(batch)
        finally:
            with self._lock:
                self._busy.difference_update(queued.key for queued in batch)
                self._lock.notify_all()

    def _request(self, batch: list[_Queued]) -> None:
        try:
            response = self._api.publish(
                topic=self.topic_path,
                messages=[queued.message for queued in batch],
                retry=self._retry,
                timeout=self.limits.timeout_seconds,
            )
        except Exception as error:  # the server's or the transport's: each message fails
            if type(error).__name__ == _PERMANENT and len(batch) > 1:
                for queued in batch:  # one at a time: only the message at fault fails
                    with self._lock:
                        paused = queued.key in self._paused
                    if paused:
                        self._settle([queued], None)
                    else:
                        self._request([queued])
                return
            with self._lock:
                self._paused.update(queued.key for queued in batch if queued.key)
            self._settle(batch, error)
            return
        for queued, message_id in zip(batch, response.message_ids, strict=True):
            queued.future.set_result(message_id)
        self._release(batch)

    def _settle(self, failed: list[_Queued], error: BaseException | None) -> None:
        """Fail ``failed`` with ``error``, or as paused when it is None."""
        for queued in failed:
            queued.future.set_exception(error if error is not None else _paused(queued.key))
        self._release(failed)

    def _release(self, done: list[_Queued]) -> None:
        if not done:
            return
        with self._lock:
            self._waiting -= len(done)
            self._waiting_bytes -= sum(queued.size for queued in done)
            self._lock.notify_all()


def _paused(key: str) -> KeyPausedError:
    return KeyPausedError(f"ordering key {key!r} is paused after a failed publish; resume it first")

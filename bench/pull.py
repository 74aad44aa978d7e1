"""The subscriber's side of an end-to-end measure: distinct messages pulled from a subscription.

Both Liberator and Debezium Server are timed the same way: a subscription is created before the
first insert, a thread pulls and acks, and each message is keyed by the ``seq`` field of the
document it carries (a redelivered or republished message counts once). The time of an event is
when the bench pulled it.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Arrivals", "Puller", "StalledError", "seq_of"]

# Liberator's data is the document as JSON ("seq": 5); Debezium's carries it inside a JSON
# string (\"seq\": 5), in relaxed or canonical extended JSON ({"$numberInt": "5"}).
_SEQ = re.compile(rb'seq\\?"\s*:\s*(?:\{\s*\\?"\$number(?:Int|Long)\\?"\s*:\s*\\?")?(\d+)')


def seq_of(data: bytes) -> int | None:
    """The ``seq`` of the document a message carries, or None if it has none."""
    match = _SEQ.search(data)
    return int(match.group(1)) if match else None


class StalledError(RuntimeError):
    """Not every expected event arrived: the run failed (its figures are not comparable)."""


@dataclass(frozen=True)
class Arrivals:
    """When the events ``first .. first + count - 1`` were pulled (epoch seconds)."""

    first_at: float
    """The earliest of them."""
    last_at: float
    """The latest: the N-th distinct message."""


class Puller:
    """A subscription on ``topic`` and a thread that pulls from it until :meth:`close`."""

    def __init__(self, project: str, topic: str, name: str) -> None:
        from google.cloud import pubsub_v1  # noqa: PLC0415  (grpc: import only when needed)

        self._client = pubsub_v1.SubscriberClient()
        self.path = self._client.subscription_path(project, name)
        self._client.create_subscription(
            request={
                "name": self.path,
                "topic": f"projects/{project}/topics/{topic}",
                "ack_deadline_seconds": 60,
            }
        )
        self.seen: dict[int, float] = {}
        """seq -> when it was first pulled."""
        self.messages = 0
        """Messages pulled, duplicates included."""
        self.sample: bytes | None = None
        """The data of the first message pulled (what the subscriber sees)."""
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="puller", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        from google.api_core import exceptions  # noqa: PLC0415

        while not self._stop.is_set():
            try:
                reply: Any = self._client.pull(
                    request={"subscription": self.path, "max_messages": 1000}, timeout=10
                )
            except (exceptions.DeadlineExceeded, exceptions.ServiceUnavailable):
                continue
            except BaseException as error:  # surfaced by wait()
                self._error = error
                return
            now = time.time()
            received = reply.received_messages
            if not received:
                self._stop.wait(0.05)  # the emulator may answer an empty pull at once
                continue
            if self.sample is None:
                self.sample = received[0].message.data
            for item in received:
                seq = seq_of(item.message.data)
                if seq is not None:
                    self.seen.setdefault(seq, now)
            self.messages += len(received)
            with contextlib.suppress(Exception):  # an unacked message only comes back later
                self._client.acknowledge(
                    request={"subscription": self.path, "ack_ids": [m.ack_id for m in received]}
                )

    def count(self, first: int, count: int) -> int:
        return sum(1 for seq in range(first, first + count) if seq in self.seen)

    def wait(
        self, first: int, count: int, *, deadline: float, stall: float, alive: Callable[[], None]
    ) -> Arrivals:
        """Wait until every one of ``count`` events from ``first`` was pulled.

        Raise :class:`StalledError` when none new arrived for ``stall`` seconds or ``deadline``
        passed; ``alive`` raises when the publisher under test has exited.
        """
        start = time.monotonic()
        progress, got = start, -1
        while True:
            if self._error is not None:
                raise RuntimeError(f"pulling from {self.path} failed: {self._error!r}")
            now_got = self.count(first, count)
            now = time.monotonic()
            if now_got >= count:
                times = [self.seen[s] for s in range(first, first + count)]
                return Arrivals(first_at=min(times), last_at=max(times))
            if now_got > got:
                progress, got = now, now_got
            alive()
            if now - progress > stall:
                raise StalledError(
                    f"stalled: {got} of {count} events after {now - start:.0f} s "
                    f"(none new for {stall:.0f} s)"
                )
            if now - start > deadline:
                raise StalledError(f"{got} of {count} events within the {deadline:.0f} s deadline")
            time.sleep(0.1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        with contextlib.suppress(Exception):
            self._client.delete_subscription(request={"subscription": self.path})
        self._client.close()

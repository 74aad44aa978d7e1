"""The event sink: a thin seam around the ordered Pub/Sub publisher.

Message ordering is on (the ordering key is the entity id). Many keys share one request, and
flow control blocks the caller when too much is in flight, so a fast change stream cannot grow
memory without bound (:mod:`liberator_publisher.runtime.pubsub`). After a failed publish the
publisher pauses that ordering key; :meth:`Sink.resume` un-pauses it.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from dataclasses import dataclass

from liberator_publisher.runtime import logs
from liberator_publisher.runtime.pubsub import KeyPausedError, OrderedPublisher, PublishLimits

__all__ = ["KeyPausedError", "Preloader", "Sink", "SinkSettings", "preload"]

log = logging.getLogger(__name__)


def preload() -> None:
    """Import the Pub/Sub client ahead of need (about a second of CPU): a standby that does
    this in the background publishes sooner when it takes over."""
    from google.api_core import retry  # noqa: F401, PLC0415
    from google.cloud import pubsub_v1  # noqa: F401, PLC0415


class Preloader:
    """Runs :func:`preload` in a background thread, once. The import costs about a second of
    CPU and 35-40 MiB, so a standby starts it only when it may soon lead."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None

    def start(self, reason: str) -> None:
        if self._thread is None:
            log.info("importing the Pub/Sub client", extra=logs.fields(reason=reason))
            self._thread = threading.Thread(target=preload, name="liberator-preload", daemon=True)
            self._thread.start()


@dataclass(frozen=True)
class SinkSettings:
    """Where the sink publishes, and how it batches and limits what is in flight."""

    project: str
    """Google Cloud project of the topic."""
    topic: str
    """Topic id (not the full path)."""
    max_in_flight_messages: int = 2000
    """Flow control: publish() blocks beyond this many unacknowledged messages."""
    max_in_flight_bytes: int = 64 * 1024 * 1024
    """Flow control: publish() blocks beyond this many unacknowledged bytes."""
    batch_max_messages: int = 1000
    """Largest batch sent in one request (all keys together)."""
    batch_max_latency_seconds: float = 0.01
    """How long a short batch waits to fill before it is sent."""
    publish_timeout_seconds: float = 60.0
    """Total time one request is retried before its messages fail."""


class Sink:
    """Publishes messages to one topic; the client is created (and imported) on first use."""

    def __init__(self, settings: SinkSettings) -> None:
        self.settings = settings
        self._publisher: OrderedPublisher | None = None
        self._topic_path = f"projects/{settings.project}/topics/{settings.topic}"

    @property
    def topic_path(self) -> str:
        return self._topic_path

    def _ensure(self) -> OrderedPublisher:
        if self._publisher is None:
            # Imported here, not at module level: the process starts (and answers its probes)
            # at once, and `preload` does the import in the background.
            from google.cloud import pubsub_v1  # noqa: PLC0415

            s = self.settings
            self._publisher = OrderedPublisher(
                pubsub_v1.PublisherClient(),
                self._topic_path,
                PublishLimits(
                    max_messages=s.batch_max_messages,
                    max_latency_seconds=s.batch_max_latency_seconds,
                    max_in_flight_messages=s.max_in_flight_messages,
                    max_in_flight_bytes=s.max_in_flight_bytes,
                    timeout_seconds=s.publish_timeout_seconds,
                ),
            )
        return self._publisher

    def publish(self, data: bytes, attributes: dict[str, str], ordering_key: str) -> Future[str]:
        """Send one message; the future gives the message id on the server's ack."""
        return self._ensure().publish(data, attributes, ordering_key)

    def resume(self, ordering_key: str) -> None:
        """Let a key paused by a failed publish send again (in order); a no-op if not paused."""
        self._ensure().resume(ordering_key)

    def close(self) -> None:
        """Send what is queued, wait for the answers, and stop the publisher's thread."""
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None

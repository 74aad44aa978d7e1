"""The event sink: a thin seam around Google's Pub/Sub publisher client.

Message ordering is on (the ordering key is the entity id) and flow control blocks the caller
when too much is in flight, so a fast change stream cannot grow memory without bound. After a
failed publish the client pauses that ordering key; :meth:`Sink.resume` un-pauses it.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

__all__ = ["Sink", "SinkSettings", "preload"]


def preload() -> None:
    """Import the Pub/Sub client ahead of need (about a second of CPU): a standby that does
    this in the background publishes sooner when it takes over."""
    from google.api_core import retry  # noqa: F401, PLC0415
    from google.cloud import pubsub_v1  # noqa: F401, PLC0415


@dataclass(frozen=True)
class SinkSettings:
    """How the publisher client batches and limits what is in flight."""

    project: str
    """Google Cloud project of the topic."""
    topic: str
    """Topic id (not the full path)."""
    max_in_flight_messages: int = 2000
    """Flow control: publish() blocks beyond this many unacknowledged messages."""
    max_in_flight_bytes: int = 64 * 1024 * 1024
    """Flow control: publish() blocks beyond this many unacknowledged bytes."""
    batch_max_messages: int = 500
    """Largest batch the client sends in one request."""
    batch_max_latency_seconds: float = 0.02
    """How long the client waits to fill a batch. Ordering keys batch apart (one batch in flight
    per key), so a live stream over many keys fills a batch only if it waits a little."""
    publish_timeout_seconds: float = 60.0
    """Total time the client retries one publish before its future fails."""


class Sink:
    """Publishes messages to one topic; the client is created (and imported) on first use."""

    def __init__(self, settings: SinkSettings) -> None:
        self.settings = settings
        self._client: Any = None
        self._topic_path = f"projects/{settings.project}/topics/{settings.topic}"
        self._retry: Any = None

    @property
    def topic_path(self) -> str:
        return self._topic_path

    def _ensure(self) -> Any:
        if self._client is None:
            # Imported here, not at module level: the process starts (and answers its probes)
            # at once, and `preload` does the import in the background.
            from google.api_core import retry as retries  # noqa: PLC0415
            from google.cloud import pubsub_v1  # noqa: PLC0415
            from google.cloud.pubsub_v1 import types  # noqa: PLC0415

            s = self.settings
            flow = types.PublishFlowControl(
                message_limit=s.max_in_flight_messages,
                byte_limit=s.max_in_flight_bytes,
                limit_exceeded_behavior=types.LimitExceededBehavior.BLOCK,
            )
            self._client = pubsub_v1.PublisherClient(
                batch_settings=types.BatchSettings(
                    max_messages=s.batch_max_messages, max_latency=s.batch_max_latency_seconds
                ),
                publisher_options=types.PublisherOptions(
                    enable_message_ordering=True, flow_control=flow
                ),
            )
            self._retry = retries.Retry(
                initial=0.1, maximum=5.0, multiplier=2.0, timeout=s.publish_timeout_seconds
            )
        return self._client

    def publish(self, data: bytes, attributes: dict[str, str], ordering_key: str) -> Future[str]:
        """Send one message; the future gives the message id on the server's ack."""
        client = self._ensure()
        future: Future[str] = client.publish(
            self._topic_path,
            data,
            ordering_key=ordering_key,
            retry=self._retry,
            timeout=self.settings.publish_timeout_seconds,
            **attributes,
        )
        return future

    def resume(self, ordering_key: str) -> None:
        """Let a key paused by a failed publish send again (in order); a no-op if not paused."""
        # The client raises when the key is not paused (say, it was never used by this client).
        with contextlib.suppress(RuntimeError):
            self._ensure().resume_publish(self._topic_path, ordering_key)

    def close(self) -> None:
        """Flush what is batched and stop the client's threads."""
        if self._client is not None:
            self._client.stop()
            self._client = None

"""What a seed is asked to do and how it went: options, summary, pacing, and the seed events' ids.

Pure: no client. The seeder (seeder.py) runs a seed with these; the command (command.py) builds
them from the flags.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from bson import json_util
from bson.json_util import JSONMode, JSONOptions

from liberator_publisher.core.errors import UsageError

__all__ = [
    "MODES",
    "SEED_ATTRIBUTE",
    "SEED_ID",
    "Pacer",
    "SeedOptions",
    "Summary",
    "parse_filter",
    "seed_event_id",
]

MODES = ("latest", "history")
SEED_ATTRIBUTE = "ce-seed"
"""The extension attribute that marks seed events (value ``"true"``)."""
# Fixed namespace: seed ids depend only on source, entity id and version.
SEED_ID_NAMESPACE = uuid.UUID("3d0c5b1e-9a77-5f0e-8a43-2b6c1f9e7d10")
SEED_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,252}")
"""A seed id: ``<namespace>/<name>`` of an EventSeed, or any name of a manual run."""
_JSON = JSONOptions(json_mode=JSONMode.RELAXED, tz_aware=True, tzinfo=UTC)


def seed_event_id(source: str, entity_id: str, version: str | None) -> str:
    """The ``ce-id`` of a seed event: the same entity version always gets the same id."""
    return str(uuid.uuid5(SEED_ID_NAMESPACE, f"{source}\n{entity_id}\n{version or ''}"))


def parse_filter(text: str) -> dict[str, Any]:
    """``--filter``: a MongoDB query in relaxed extended JSON (``{"$date": ...}`` works)."""
    try:
        value = json_util.loads(text, json_options=_JSON)
    except (ValueError, TypeError) as error:
        raise UsageError(
            f'--filter: not JSON ({error}); give a MongoDB query such as \'{{"region": "eu"}}\''
        ) from None
    if not isinstance(value, dict):
        raise UsageError(
            f"--filter: must be a JSON object (a MongoDB query), not {type(value).__name__}"
        )
    return value


@dataclass(frozen=True)
class SeedOptions:
    """The flags of ``liberator seed``."""

    topic: str
    """Seed topic id (``--topic``), in ``LIBERATOR_PUBSUB_PROJECT``."""
    seed_id: str
    """Keys the ledger, checkpoint and Redis status (``--seed-id``)."""
    mode: str = "latest"
    """``latest`` (one event per entity) or ``history`` (every version document)."""
    filter: Mapping[str, Any] = field(default_factory=dict)
    """A MongoDB query selecting the documents (``--filter``)."""
    batch_size: int = 500
    """Documents per batch: per publish wait and checkpoint (``--batch-size``)."""
    rate_limit: float = 0.0
    """Documents per second, 0 for no limit (``--rate-limit``)."""
    allow_empty: bool = False
    """Seed a collection that does not exist (yet) on purpose: nothing to publish, and the seed
    succeeds. Without it such a seed is refused, since it is most often a typo
    (``--allow-empty``, EventSeed ``spec.allowEmpty``)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"--mode: {self.mode!r} is not one of {', '.join(MODES)}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size: must be at least 1, got {self.batch_size}")
        if self.rate_limit < 0:
            raise UsageError(f"--rate-limit: must be 0 (no limit) or more, got {self.rate_limit}")
        if not SEED_ID.fullmatch(self.seed_id):
            raise UsageError(
                f"--seed-id: {self.seed_id!r} is not a seed id; use letters, "
                "digits and . _ / - (such as shop/quotes-seed)"
            )


@dataclass
class Summary:
    """What a seed did; ``line()`` is the last line on stdout."""

    seeded: int = 0
    """Events published by this seed (across resumed runs; a rerun of a finished seed starts
    from 0, so it shows what was new)."""
    already: int = 0
    """On a rerun of a finished seed: the events its earlier runs published (none again)."""
    skipped: int = 0
    """Bad documents: no id field, no version field, unencodable or over Pub/Sub's limits."""
    failed: int = 0
    """Events Pub/Sub refused after the client's retries; a rerun publishes just these again."""
    scanned: int = 0
    """Documents read."""
    total: int = 0
    """Documents matching the filter when the scan started (for progress and ETA)."""

    def line(self) -> str:
        return f"seeded={self.seeded} skipped={self.skipped} failed={self.failed}"

    def counts(self) -> dict[str, int]:
        return {
            "seeded": self.seeded,
            "already": self.already,
            "skipped": self.skipped,
            "failed": self.failed,
            "scanned": self.scanned,
        }


class Pacer:
    """Keeps a rate: ``wait()`` before each document sleeps as needed.

    A token bucket holding one second of documents: after a stall (a slow batch, a pause) it
    catches up by at most one second's worth, so any window of T seconds sees at most
    rate x (T + 1) documents.
    """

    BURST_SECONDS = 1.0

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._next: float | None = None  # when the next document is due

    def delay(self) -> float:
        """Seconds to wait before the next document (0 when unlimited or behind)."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        if self._next is None:
            self._next = now
        self._next = max(self._next, now - self.BURST_SECONDS)  # no credit beyond the burst
        return max(0.0, self._next - now)

    def wait(self) -> None:
        pause = self.delay()
        if pause > 0:
            self._sleep(pause)
        if self._next is not None:
            self._next += 1.0 / self.rate

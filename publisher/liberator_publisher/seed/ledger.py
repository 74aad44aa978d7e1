"""The seed ledger: what a seed has published, as a range of entity ids, and where it stands.

The scan runs in entity-id order, so "seeded" is a range: every entity up to ``after``. One
document per seed id, ``_id = <seed-id>``, in the collection ``<collection>.seedledger`` next to
the entity collection, holds that position together with the counts, the flags, the start time
(the seed events' ``ce-time``), the capture position recorded before the scan, and the ids of
entities whose publish failed (a rerun retries just those).

A range costs one small write per batch instead of one write per entity, which matters: a write
per entity alone would cost as much as the raw inserts the seed is measured against. The
position moves only after Pub/Sub acknowledged the batch, so a crash can repeat events (with the
same ``ce-id``) but never skip one. A second run of a finished seed publishes nothing new.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pymongo.collection import Collection

from liberator_publisher.core.contract import LEDGER_SUFFIX
from liberator_publisher.core.errors import LiberatorError

__all__ = [
    "LEDGER_SUFFIX",
    "MAX_RETRY_IDS",
    "SEED_PHASES",
    "Checkpoint",
    "Ledger",
    "LedgerError",
    "SeedPhase",
]

SeedPhase = Literal["Running", "Succeeded", "Failed"]
"""Where a seed stands, in its ledger, its Redis progress and the EventSeed's status."""
SEED_PHASES: tuple[SeedPhase, ...] = ("Running", "Succeeded", "Failed")
MAX_RETRY_IDS = 10_000
"""At most this many failed entity ids are kept for a retry (more means Pub/Sub is down: rerun
with a new seed id)."""


class LedgerError(LiberatorError, ValueError):
    """A ledger document that cannot be read (edited by hand, say). The message names the field."""

    def __init__(self, seed_id: str, field: str, problem: str) -> None:
        super().__init__(
            f"seed ledger {seed_id!r}: field {field!r} {problem}; fix or delete "
            f"the document to start that seed over, or use a new --seed-id"
        )
        self.field = field


@dataclass
class Checkpoint:
    """Where a seed stands: saved after each acknowledged batch, read when a seed starts."""

    seed_id: str
    """The seed this is the ledger of."""
    mode: str
    """``latest`` or ``history``; a rerun must use the same."""
    filter: str
    """The filter as canonical extended JSON; a rerun must use the same."""
    started_at: datetime
    """When the seed first started; every event of this seed carries it as ``ce-time``."""
    phase: SeedPhase = "Running"
    """``Running`` (also after a crash), ``Succeeded`` or ``Failed``."""
    after: Any = None
    """The last entity id (its BSON value) whose events Pub/Sub acknowledged; None at the start."""
    counts: dict[str, int] = field(default_factory=dict)
    """``seeded``, ``skipped``, ``failed``, ``scanned`` up to ``after``."""
    capture: dict[str, Any] = field(default_factory=dict)
    """The capture stream position recorded before the scan (``resumeToken``, ``time``)."""
    retry: list[Any] = field(default_factory=list)
    """Entity ids whose publish failed; a rerun of the finished seed publishes them again."""
    completed_at: datetime | None = None
    """When the scan finished."""

    def document(self) -> dict[str, Any]:
        return {
            "_id": self.seed_id,
            "mode": self.mode,
            "filter": self.filter,
            "startedAt": self.started_at,
            "phase": self.phase,
            "after": self.after,
            "counts": dict(self.counts),
            "capture": self.capture,
            "retry": list(self.retry[:MAX_RETRY_IDS]),
            "completedAt": self.completed_at,
        }

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Checkpoint:
        """Read a ledger document; ``LedgerError`` names a field that is missing or wrong."""
        seed_id = str(document.get("_id"))

        def field_of(name: str, kind: type | tuple[type, ...], required: bool = True) -> Any:
            value = document.get(name)
            if value is None and not required:
                return None
            if not isinstance(value, kind) or isinstance(value, bool):
                raise LedgerError(
                    seed_id,
                    name,
                    "is missing"
                    if value is None
                    else f"must be {getattr(kind, '__name__', kind)}, not {type(value).__name__}",
                )
            return value

        counts = field_of("counts", dict, required=False) or {}
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in counts.values()):
            raise LedgerError(seed_id, "counts", "must hold whole numbers")
        if field_of("mode", str) not in ("latest", "history"):
            raise LedgerError(seed_id, "mode", "must be latest or history")
        phase = field_of("phase", str, required=False) or "Running"
        if phase not in SEED_PHASES:
            raise LedgerError(seed_id, "phase", f"must be one of {', '.join(SEED_PHASES)}")
        return cls(
            seed_id=seed_id,
            mode=document["mode"],
            filter=field_of("filter", str),
            started_at=field_of("startedAt", datetime),
            phase=phase,
            after=document.get("after"),
            counts=dict(counts),
            capture=field_of("capture", dict, required=False) or {},
            retry=field_of("retry", list, required=False) or [],
            completed_at=field_of("completedAt", datetime, required=False),
        )


class Ledger:
    """The ledger document of one seed id."""

    def __init__(self, collection: Collection[dict[str, Any]], seed_id: str) -> None:
        self.collection = collection
        self.seed_id = seed_id

    def checkpoint(self) -> Checkpoint | None:
        """The saved checkpoint of this seed, if any."""
        found = self.collection.find_one({"_id": self.seed_id})
        return None if found is None else Checkpoint.from_document(found)

    def save(self, checkpoint: Checkpoint) -> None:
        """Write the checkpoint (replacing the previous one)."""
        self.collection.replace_one({"_id": self.seed_id}, checkpoint.document(), upsert=True)

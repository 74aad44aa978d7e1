"""What a run of a seed does, decided from its ledger checkpoint alone (pure).

A seed id names one seed. Its first run starts a scan. A rerun after a crash resumes after the
last acknowledged entity, with the counts so far. A rerun of a finished seed publishes nothing,
unless some entities failed: then it publishes just those again. A rerun with other flags is
refused, since the ledger's range and counts belong to the flags it ran with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from liberator_publisher.core.errors import UsageError
from liberator_publisher.seed.ledger import Checkpoint

__all__ = ["ResumePlan", "resume_plan"]


@dataclass(frozen=True)
class ResumePlan:
    """The decision, and what the run starts from."""

    action: Literal["start", "resume", "retry", "done"]
    """``start`` a new scan; ``resume`` after ``Checkpoint.after``; ``retry`` only ``only``;
    ``done``: nothing to publish."""
    counts: dict[str, int] = field(default_factory=dict)
    """The counts the run goes on from (a retry starts ``failed`` at 0 again)."""
    retry: list[Any] = field(default_factory=list)
    """Entities whose publish failed before, still to be retried at the end of a resumed scan."""
    only: list[Any] | None = None
    """For ``retry``: the entity ids to publish again."""


def resume_plan(
    checkpoint: Checkpoint | None, *, seed_id: str, mode: str, filter_text: str
) -> ResumePlan:
    """The plan for a run of ``seed_id`` with ``mode`` and ``filter_text`` (canonical extended
    JSON). Raises ``UsageError`` naming ``--seed-id`` when the checkpoint ran with other flags."""
    if checkpoint is None:
        return ResumePlan("start")
    if checkpoint.mode != mode or checkpoint.filter != filter_text:
        raise UsageError(
            f"--seed-id: seed {seed_id!r} ran with --mode {checkpoint.mode} "
            f"--filter {checkpoint.filter}; rerun it with the same flags, or use a new "
            "--seed-id"
        )
    counts = dict(checkpoint.counts)
    if checkpoint.phase == "Succeeded":
        if not checkpoint.retry:
            return ResumePlan("done", counts=counts)
        return ResumePlan("retry", counts={**counts, "failed": 0}, only=list(checkpoint.retry))
    # Running or Failed: a run that stopped; resume after its checkpoint.
    return ResumePlan("resume", counts=counts, retry=list(checkpoint.retry))

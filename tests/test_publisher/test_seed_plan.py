"""The seed's resume plan (seed/plan.py): pure, decided from the ledger checkpoint alone."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from liberator_publisher.core.errors import UsageError
from liberator_publisher.seed.ledger import Checkpoint
from liberator_publisher.seed.plan import resume_plan

FILTER = '{"region": "eu"}'


def checkpoint(**changes: object) -> Checkpoint:
    fields: dict[str, object] = {
        "seed_id": "s1",
        "mode": "latest",
        "filter": FILTER,
        "started_at": datetime(2026, 12, 1, tzinfo=UTC),
        "counts": {"seeded": 40, "skipped": 1, "failed": 2, "scanned": 43},
        **changes,
    }
    return Checkpoint(**fields)  # type: ignore[arg-type]


def test_a_first_run_starts_a_scan() -> None:
    first = resume_plan(None, seed_id="s1", mode="latest", filter_text=FILTER)
    assert (first.action, first.counts, first.only) == ("start", {}, None)


def test_a_stopped_run_resumes_with_its_counts_and_failures() -> None:
    for phase in ("Running", "Failed"):
        resumed = resume_plan(
            checkpoint(phase=phase, after="Q-40", retry=["Q-7"]),
            seed_id="s1",
            mode="latest",
            filter_text=FILTER,
        )
        assert resumed.action == "resume" and resumed.only is None
        assert resumed.counts["seeded"] == 40 and resumed.retry == ["Q-7"]


def test_a_finished_seed_publishes_nothing_or_only_its_failures() -> None:
    done = resume_plan(
        checkpoint(phase="Succeeded"), seed_id="s1", mode="latest", filter_text=FILTER
    )
    assert done.action == "done"
    retry = resume_plan(
        checkpoint(phase="Succeeded", retry=["Q-7", "Q-9"]),
        seed_id="s1",
        mode="latest",
        filter_text=FILTER,
    )
    assert retry.action == "retry" and retry.only == ["Q-7", "Q-9"]
    assert retry.counts["failed"] == 0 and retry.counts["seeded"] == 40


@pytest.mark.parametrize(("mode", "filter_text"), [("history", FILTER), ("latest", "{}")])
def test_a_rerun_with_other_flags_is_refused_naming_the_seed(mode: str, filter_text: str) -> None:
    with pytest.raises(UsageError, match=r"--seed-id: seed 's1' ran with --mode latest"):
        resume_plan(checkpoint(), seed_id="s1", mode=mode, filter_text=filter_text)

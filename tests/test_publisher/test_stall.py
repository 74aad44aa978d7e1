"""Stalls and checkpoint ages: the pure rule, then a real sidecar on the local servers that stalls
in each documented way, says so in its status record and metrics, and recovers by itself with
nothing lost."""

from __future__ import annotations

import signal
from datetime import datetime
from typing import Any

import pytest
import redis
from pymongo.database import Database

from liberator_publisher.core.stall import CAPTURE_NOT_MOVING, NOTHING_PUBLISHED, stall_verdict
from liberator_publisher.core.status import Progress, read_status
from tests.support.publisher import Collector, Publisher, Topic, eventually

STALL = {"LIBERATOR_ID_FIELD": "entity", "LIBERATOR_STALL_AFTER_SECONDS": "2"}


# -- the rule (pure) -------------------------------------------------------------------------


def verdict(**overrides: Any) -> Any:
    args: dict[str, Any] = {
        "now": 1000.0,
        "stall_after": 300.0,
        "backlog": 0,
        "pending_since": None,
        "published_at": None,
        "unsaved_since": None,
    }
    return stall_verdict(**{**args, **overrides})


def test_an_empty_outbox_and_a_saved_capture_never_stall() -> None:
    assert verdict() is None
    assert verdict(published_at=0.0) is None  # a quiet publisher is not a stalled one


def test_pending_events_and_no_publish_for_the_threshold_is_nothing_published() -> None:
    stall = verdict(backlog=7, pending_since=600.0, published_at=650.0)
    assert stall is not None and stall.reason == NOTHING_PUBLISHED
    assert stall.seconds == pytest.approx(350.0)  # from the last publish, the later start
    assert "7 event(s) pending" in stall.message and "liberator_publish_errors" in stall.message


def test_a_recent_publish_or_a_young_backlog_is_no_stall() -> None:
    assert verdict(backlog=7, pending_since=100.0, published_at=990.0) is None
    assert verdict(backlog=7, pending_since=800.0, published_at=None) is None
    # Exactly at the threshold it stalls: the threshold is "for this long", inclusive.
    assert verdict(backlog=1, pending_since=700.0) is not None


def test_changes_received_and_no_checkpoint_for_the_threshold_is_capture_not_moving() -> None:
    stall = verdict(unsaved_since=500.0, backlog=3, pending_since=500.0)
    assert stall is not None and stall.reason == CAPTURE_NOT_MOVING  # the upstream cause first
    assert "checkpoint has not moved" in stall.message
    assert verdict(unsaved_since=900.0) is None


def test_paused_or_parked_is_never_stalled() -> None:
    assert verdict(backlog=5, pending_since=0.0, paused=True) is None
    assert verdict(unsaved_since=0.0, parked=True) is None


def test_progress_keeps_the_start_of_a_backlog_until_it_empties() -> None:
    progress = Progress()
    progress.backlog_at(3, 10.0)
    progress.backlog_at(5, 20.0)
    assert progress.pending_since == 10.0 and progress.backlog == 5
    progress.backlog_at(0, 30.0)
    assert progress.pending_since is None
    progress.backlog_at(1, 40.0)
    assert progress.pending_since == 40.0


# -- a real sidecar --------------------------------------------------------------------------


def record(publisher: Publisher) -> dict[str, Any]:
    with redis.Redis.from_url(publisher.env["LIBERATOR_REDIS_URL"]) as r:
        return read_status(r, publisher.name) or {}


def stalled_reason(publisher: Publisher) -> str | None:
    stalled = record(publisher).get("stalled")
    return stalled.get("reason") if isinstance(stalled, dict) else None


def test_nothing_published_while_the_topic_is_missing_then_clears_with_nothing_lost(
    publisher: Publisher, db: Database[dict[str, Any]]
) -> None:
    late = Topic(
        publisher.topic.project,
        f"late-{publisher.topic.topic_id}",
        f"late-{publisher.topic.subscription_id}",
    )  # not created yet
    car = publisher.start(LIBERATOR_TOPIC=late.topic_id, **STALL)
    db[publisher.collection].insert_many([{"entity": f"e{i}", "seq": i} for i in range(10)])
    eventually(
        lambda: stalled_reason(publisher) == NOTHING_PUBLISHED,
        what="the record says NothingPublished",
        deadline=60,
    )
    stalled = record(publisher)["stalled"]
    assert "10 event(s) pending" in stalled["message"]
    datetime.fromisoformat(stalled["since"])
    assert car.metric("liberator_stalled", 'reason="NothingPublished"') == 1.0
    assert car.metric("liberator_stalled", 'reason="CaptureNotMoving"') == 0.0

    # Frozen while the topic and its subscription appear, so no publish lands in between.
    car.signal(signal.SIGSTOP)
    try:
        late.create()
    finally:
        car.signal(signal.SIGCONT)
    collector = Collector(late)
    try:
        eventually(lambda: len(collector.ids()) >= 10, what="all 10 events", deadline=120)
        eventually(lambda: stalled_reason(publisher) is None, what="the stall clears by itself")
        assert car.metric("liberator_stalled", 'reason="NothingPublished"') == 0.0
        assert {m.json()["seq"] for m in collector.snapshot()} == set(range(10))
    finally:
        collector.close()


def test_capture_not_moving_while_outbox_writes_fail_then_clears_with_nothing_lost(
    publisher: Publisher, collector: Collector, db: Database[dict[str, Any]]
) -> None:
    car = publisher.start(**STALL)
    outbox = db[publisher.outbox]
    # A hand-made unique index that every second insert breaks: the outbox refuses the events,
    # the capture loop retries, and its checkpoint holds still.
    outbox.create_index("operation", unique=True, name="bad_unique_operation")
    quotes = db[publisher.collection]
    quotes.insert_many([{"entity": f"e{i}", "seq": i} for i in range(5)])
    eventually(
        lambda: stalled_reason(publisher) == CAPTURE_NOT_MOVING,
        what="the record says CaptureNotMoving",
        deadline=60,
    )
    assert "checkpoint has not moved" in record(publisher)["stalled"]["message"]
    assert car.metric("liberator_stalled", 'reason="CaptureNotMoving"') == 1.0
    assert car.alive()

    outbox.drop_index("bad_unique_operation")
    eventually(lambda: len(collector.ids()) >= 5, what="all 5 events after the fix", deadline=90)
    eventually(lambda: stalled_reason(publisher) is None, what="the stall clears by itself")
    assert {m.json()["seq"] for m in collector.snapshot()} == set(range(5))
    assert outbox.count_documents({}) == 5


def test_checkpoint_ages_are_reported_and_move_with_the_positions(
    publisher: Publisher, collector: Collector, db: Database[dict[str, Any]]
) -> None:
    car = publisher.start(**STALL)
    db[publisher.collection].insert_one({"entity": "a", "seq": 0})
    eventually(lambda: len(collector.ids()) >= 1, what="the first event")

    def ages() -> dict[str, Any]:
        value = record(publisher).get("checkpoints") or {}
        return value if {"capture", "relay"} <= set(value) else {}

    first = eventually(ages, what="both checkpoint ages in the record", deadline=60)
    for entry in first.values():
        assert entry["ageSeconds"] >= 0
        datetime.fromisoformat(entry["movedAt"])
    capture_age = car.metric("liberator_checkpoint_age_seconds", 'loop="capture"')
    assert capture_age is not None and capture_age >= 0
    db[publisher.collection].insert_one({"entity": "a", "seq": 1})
    eventually(lambda: len(collector.ids()) >= 2, what="the second event")
    eventually(
        lambda: ages().get("capture", {}).get("movedAt", "") > first["capture"]["movedAt"],
        what="the capture checkpoint's movedAt advances",
        deadline=60,
    )

"""Resume-point headroom: the pure verdict, and a real sidecar on the bounded stand-in oplog that
warns while its capture checkpoint holds still, before the resume point is lost and it parks."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from bson import Timestamp
from pymongo import MongoClient

from liberator_publisher.core.headroom import (
    AT_RISK,
    LOST,
    OK,
    UNKNOWN,
    OplogWindow,
    headroom_verdict,
    token_time,
)
from liberator_publisher.core.status import read_status, resume_point
from liberator_publisher.sidecar.metrics import Metrics
from liberator_stack import Server
from tests.support.publisher import Publisher, eventually

WINDOW = OplogWindow(Timestamp(1000, 1), Timestamp(1100, 7))


def test_a_token_says_its_cluster_time_in_mongodbs_keystring_form() -> None:
    # MongoDB 7's token of an insert at Timestamp(1765000000, 3): 82, then the 8 bytes.
    token = {"_data": "826933C340000000032B042C0100296E5A1004ABCDEF"}
    assert token_time(token) == Timestamp(1765000000, 3)
    assert token_time({"_data": "82" + format(1000 << 32 | 1, "016x")}) == Timestamp(1000, 1)


@pytest.mark.parametrize(
    "token",
    [
        None,
        {},
        {"_data": 5},
        {"_data": "8200"},
        {"_data": "01" + "0" * 16},
        {"_data": "82zz000000000000001"},
    ],
)
def test_a_token_that_does_not_say_has_no_time(token: dict[str, Any] | None) -> None:
    assert token_time(token) is None


def test_headroom_is_the_distance_from_the_oldest_entry() -> None:
    verdict = headroom_verdict(
        WINDOW, {"capture": Timestamp(1090, 0), "relay": Timestamp(1099, 0)}, 0.25
    )
    assert (verdict.status, verdict.reason) == ("False", OK)
    assert verdict.loops == {"capture": 90.0, "relay": 99.0}
    assert verdict.window_seconds == 100.0 and verdict.oldest == Timestamp(1000, 1)
    assert verdict.at_risk == ()
    assert "capture 90s, relay 99s of the 100s oplog window" in verdict.message


def test_below_the_margin_is_at_risk_and_names_the_loop() -> None:
    verdict = headroom_verdict(
        WINDOW, {"capture": Timestamp(1024, 0), "relay": Timestamp(1099, 0)}, 0.25
    )
    assert (verdict.status, verdict.reason) == ("True", AT_RISK)
    assert verdict.at_risk == ("capture",)
    assert "the capture checkpoint is near the oldest oplog entry" in verdict.message
    assert "below 25% of the 100s oplog window" in verdict.message
    # At the margin exactly: not yet.
    edge = headroom_verdict(WINDOW, {"capture": Timestamp(1025, 0)}, 0.25)
    assert edge.status == "False"


def test_below_zero_the_resume_point_is_lost() -> None:
    verdict = headroom_verdict(
        WINDOW, {"capture": Timestamp(990, 0), "relay": Timestamp(1099, 0)}, 0.25
    )
    assert (verdict.status, verdict.reason) == ("True", LOST)
    assert verdict.loops["capture"] == -10.0
    assert "EventSeed" in verdict.message and "restartFrom" in verdict.message


def test_unknown_never_reads_as_safe() -> None:
    unreadable = headroom_verdict(
        "not authorized to read local.oplog.rs", {"capture": Timestamp(1090, 0)}, 0.25
    )
    assert (unreadable.status, unreadable.reason) == ("Unknown", UNKNOWN)
    assert "not authorized" in unreadable.message
    assert unreadable.window_seconds is None and unreadable.loops == {}
    nothing = headroom_verdict(WINDOW, {"capture": None}, 0.25)
    assert (nothing.status, nothing.reason) == ("Unknown", UNKNOWN)
    assert nothing.window_seconds == 100.0


@pytest.mark.parametrize("margin", [0, 1, -0.5, 25])
def test_a_margin_outside_zero_to_one_is_refused(margin: float) -> None:
    with pytest.raises(ValueError, match="margin must be between 0 and 1"):
        headroom_verdict(WINDOW, {}, margin)


def test_the_status_entry_and_the_metrics_carry_the_verdict() -> None:
    verdict = headroom_verdict(WINDOW, {"capture": Timestamp(1010, 0)}, 0.25)
    entry = resume_point(verdict)
    assert entry["status"] == "True" and entry["windowSeconds"] == 100.0
    assert entry["oldestEntry"] == "1970-01-01T00:16:40.000Z"
    assert entry["headroomSeconds"] == {"capture": 10.0}
    metrics = Metrics()
    text = metrics.render().decode()
    # Unknown from the start: NaN, never a 0 that reads as "no headroom".
    assert "liberator_oplog_window_seconds NaN" in text
    assert 'liberator_resume_point_at_risk{loop="capture"} 0.0' in text
    metrics.set_headroom(verdict)
    text = metrics.render().decode()
    assert "liberator_oplog_window_seconds 100.0" in text
    assert 'liberator_resume_headroom_seconds{loop="capture"} 10.0' in text
    assert 'liberator_resume_headroom_seconds{loop="relay"} NaN' in text
    assert 'liberator_resume_point_at_risk{loop="capture"} 1.0' in text
    assert 'liberator_resume_point_at_risk{loop="relay"} 0.0' in text


# -- a real sidecar on the bounded stand-in oplog ---------------------------------------------

CAP = 300
"""Oplog entries the stand-in keeps (the bounded_mongo fixture reads it)."""


def resume_record(publisher: Publisher) -> dict[str, Any]:
    with redis.Redis.from_url(publisher.env["LIBERATOR_REDIS_URL"]) as r:
        record = read_status(r, publisher.name) or {}
    point = record.get("resumePoint")
    return {**point, "parked": record.get("parked", "")} if isinstance(point, dict) else {}


def test_a_stuck_capture_warns_before_its_resume_point_is_lost_then_parks(
    bounded_publisher: Publisher, bounded_mongo: Server
) -> None:
    publisher = bounded_publisher
    client: MongoClient[dict[str, Any]] = MongoClient(bounded_mongo.exports["LIBERATOR_MONGO_URI"])
    try:
        db = client[publisher.database]
        outbox, quotes, other = db[publisher.outbox], db[publisher.collection], db["other"]
        car = publisher.start(LIBERATOR_RESUME_MARGIN_PERCENT="50")
        quotes.insert_many([{"_id": f"q{i}"} for i in range(3)])
        eventually(
            lambda: outbox.count_documents({"status": "published"}) == 3,
            what="the first writes published",
        )
        # Both loops' checkpoints are written within a few seconds of their first batches.
        healthy = eventually(
            lambda: (
                r
                if (r := resume_record(publisher)).get("reason") == OK
                and set(r.get("headroomSeconds") or {}) == {"capture", "relay"}
                else None
            ),
            what="HeadroomOK for both loops in the record",
            deadline=30,
        )
        assert healthy["status"] == "False" and healthy["windowSeconds"] >= 0
        assert car.metric("liberator_resume_point_at_risk", 'loop="capture"') == 0.0

        # Capture stops moving: every second outbox insert breaks a hand-made unique index, so
        # the loop retries and its checkpoint holds still, while other writes fill the oplog.
        outbox.delete_many({})  # all published; the index below could not be built over them
        outbox.create_index("operation", unique=True, name="bad_unique_operation")
        quotes.insert_many([{"_id": f"s{i}"} for i in range(3)])
        deadline, warned = time.monotonic() + 90, {}
        for n in range(900):  # bounded: 10 writes a second, at most 90 s
            other.insert_one({"n": n})
            if n % 10 == 0 and (r := resume_record(publisher)).get("status") == "True":
                warned = r
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert warned.get("reason") == AT_RISK, warned  # the warning, not yet the loss
        assert warned["headroomSeconds"]["capture"] >= 0
        assert warned["headroomSeconds"]["capture"] < 0.5 * warned["windowSeconds"]
        assert "capture checkpoint is near the oldest oplog entry" in warned["message"]
        assert not warned["parked"]
        assert (
            eventually(
                lambda: car.metric("liberator_resume_point_at_risk", 'loop="capture"'),
                what="the at-risk metric",
            )
            == 1.0
        )
        assert car.alive()

        # Left alone past the oplog window, the resume point is gone: the restart parks.
        car.stop()
        outbox.drop_index("bad_unique_operation")
        other.insert_many([{"late": i} for i in range(CAP + 50)])
        publisher.sidecar().start().wait_ready()
        # The first record may come before the leader's first read of the window (Unknown).
        lost = eventually(
            lambda: (
                r
                if "history_lost" in (r := resume_record(publisher)).get("parked", "")
                and r.get("reason") != UNKNOWN
                else None
            ),
            what="parked on history_lost, with the window read",
            deadline=60,
        )
        assert (lost["status"], lost["reason"]) == ("True", LOST)
        assert lost["headroomSeconds"]["capture"] < 0
    finally:
        client.close()

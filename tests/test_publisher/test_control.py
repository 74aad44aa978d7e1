"""The operator's control record, carried out by ``liberator publish`` on the real local servers:
``paused`` stops publishing and loses nothing, ``restartFrom`` moves the capture checkpoint once
per id (``position: now`` recovers a parked sidecar; a ``time`` starts capture there)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from pymongo.database import Database

from liberator_publisher.core.contract import control_key, status_key
from liberator_publisher.core.control import (
    ControlError,
    ControlRecord,
    RestartRequest,
    parse_restart,
    write_control,
)
from liberator_publisher.state.checkpoint import CHECKPOINT_COLLECTION
from tests.support.publisher import Collector, Publisher, eventually
from tests.test_publisher.test_failures import LOG_ENTITY, REJECTED_TOKEN, parked_health
from tests.test_publisher.test_publish_e2e import check_order


@pytest.fixture()
def r(publisher: Publisher) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(publisher.env["LIBERATOR_REDIS_URL"])
    yield client
    client.delete(control_key(publisher.name))
    client.close()


def record(r: redis.Redis, publisher: Publisher) -> dict[str, Any]:
    raw = r.get(status_key(publisher.name))
    return json.loads(raw) if raw else {}


def control(
    r: redis.Redis,
    publisher: Publisher,
    *,
    paused: bool = False,
    restart: dict[str, str] | None = None,
) -> None:
    write_control(
        r,
        publisher.name,
        ControlRecord(paused=paused, restartFrom=parse_restart(restart) if restart else None),
    )


def plant_rejected_token(db: Database[dict[str, Any]], publisher: Publisher) -> None:
    # A token the server cannot resume from takes the park path (see test_failures.py).
    db[CHECKPOINT_COLLECTION].insert_one(
        {"_id": f"{publisher.name}#capture", "token": REJECTED_TOKEN, "epoch": 0}
    )


# -- paused ----------------------------------------------------------------------------------


def test_paused_publishes_nothing_and_unpausing_publishes_everything_in_order(
    publisher: Publisher, db: Database[dict[str, Any]], r: redis.Redis, collector: Collector
) -> None:
    car = publisher.start(**LOG_ENTITY)
    control(r, publisher, paused=True)
    eventually(lambda: record(r, publisher).get("paused"), what="the leader reports paused")
    total = 120
    entities = db[publisher.collection]
    for start in range(0, total, 30):
        entities.insert_many([{"entity": f"e{i % 7}", "seq": i} for i in range(start, start + 30)])
    outbox = db[publisher.outbox]
    # Capture goes on while paused: every change reaches the outbox, and stays pending.
    eventually(
        lambda: outbox.count_documents({"status": "pending"}) == total,
        what="all changes captured as pending while paused",
    )
    time.sleep(2.0)  # longer than a relay round and a sweep's first pass: nothing may go out
    assert outbox.count_documents({"status": "published"}) == 0
    assert collector.snapshot() == []

    control(r, publisher, paused=False)
    eventually(
        lambda: outbox.count_documents({"status": "published"}) == total,
        what="everything pending published after unpausing",
    )
    eventually(
        lambda: len({m.json()["seq"] for m in collector.snapshot()}) == total,
        what="every event delivered",
    )
    check_order(collector.snapshot(), total)
    assert not record(r, publisher).get("paused")
    assert car.stop() == 0


# -- restartFrom -----------------------------------------------------------------------------


def test_restart_from_now_recovers_a_parked_sidecar_once_per_id(
    publisher: Publisher, db: Database[dict[str, Any]], r: redis.Redis
) -> None:
    plant_rejected_token(db, publisher)
    car = publisher.sidecar().start().wait_ready()
    eventually(lambda: parked_health(car), what="parked")
    control(r, publisher, restart={"id": "recover-1", "position": "now"})
    eventually(lambda: car.get("/healthz")[1].startswith("ok (leader"), what="resumed")
    done = eventually(lambda: record(r, publisher).get("restart"), what="restart reported")
    assert done["id"] == "recover-1" and done["position"] == "now" and done["doneAt"]
    assert not record(r, publisher)["parked"]
    outbox = db[publisher.outbox]
    db[publisher.collection].insert_one({"_id": "after-restart"})
    eventually(
        lambda: outbox.find_one({"entityId": "after-restart", "status": "published"}),
        what="publishing again after the restart",
    )
    assert car.stop() == 0

    # The same id again (a pod restart, the operator writing the record anew) does nothing: a
    # write made while no sidecar ran is still captured, so capture did not jump to "now".
    db[publisher.collection].insert_one({"_id": "while-down"})
    control(r, publisher, restart={"id": "recover-1", "position": "now"})
    car = publisher.sidecar().start().wait_ready()
    eventually(
        lambda: outbox.find_one({"entityId": "while-down", "status": "published"}),
        what="the write made while down published (the request did not run again)",
    )
    assert record(r, publisher)["restart"]["doneAt"] == done["doneAt"]
    restarts = [
        line for line in car.log_lines() if line.get("event", "").startswith("restarted capture")
    ]
    assert restarts == []
    assert car.stop() == 0


def test_restart_from_a_time_captures_writes_after_it_and_not_before(
    publisher: Publisher, db: Database[dict[str, Any]], r: redis.Redis
) -> None:
    plant_rejected_token(db, publisher)
    car = publisher.sidecar().start().wait_ready()
    eventually(lambda: parked_health(car), what="parked")
    entities = db[publisher.collection]
    entities.insert_many([{"_id": f"before-{i}"} for i in range(5)])
    # Cluster times are whole seconds and the request rounds down: leave a clear second.
    time.sleep(1.2)
    at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    time.sleep(max(0.0, (at - datetime.now(UTC)).total_seconds()) + 0.2)
    entities.insert_many([{"_id": f"after-{i}"} for i in range(5)])
    control(r, publisher, restart={"id": "t-1", "time": at.isoformat().replace("+00:00", "Z")})
    outbox = db[publisher.outbox]
    eventually(
        lambda: outbox.count_documents({"status": "published"}) == 5,
        what="the writes after the time published",
    )
    done = record(r, publisher)["restart"]
    assert done["id"] == "t-1" and done["position"].startswith(at.strftime("%Y-%m-%dT%H:%M:%S"))
    time.sleep(1.0)  # a relay round more: the earlier writes must not follow
    ids = sorted(d["entityId"] for d in outbox.find({}, {"entityId": 1}))
    assert ids == [f"after-{i}" for i in range(5)], ids
    assert car.stop() == 0


def test_restart_from_a_future_time_is_refused_with_a_clear_message(
    publisher: Publisher, db: Database[dict[str, Any]], r: redis.Redis
) -> None:
    car = publisher.start()
    before = db[CHECKPOINT_COLLECTION].find_one({"_id": f"{publisher.name}#capture"})
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat(timespec="seconds")
    control(r, publisher, restart={"id": "too-soon", "time": future})
    rejected = eventually(
        lambda: record(r, publisher).get("restartRejected"), what="the leader refuses the request"
    )
    assert rejected["id"] == "too-soon"
    assert "spec.restartFrom.time" in rejected["message"] and "future" in rejected["message"]
    assert record(r, publisher).get("restart") is None
    after = db[CHECKPOINT_COLLECTION].find_one({"_id": f"{publisher.name}#capture"})
    assert after is not None and before is not None and after["epoch"] == before["epoch"]
    assert car.alive() and car.get("/healthz")[1].startswith("ok (leader")
    assert car.stop() == 0


def test_a_malformed_control_record_is_ignored_with_a_warning_naming_the_field(
    publisher: Publisher, r: redis.Redis
) -> None:
    car = publisher.start()
    r.set(control_key(publisher.name), json.dumps({"paused": "yes"}))
    line = eventually(
        lambda: next(
            (x for x in car.log_lines() if x.get("event", "").startswith("ignoring a malformed")),
            None,
        ),
        what="a warning about the control record",
    )
    assert "'paused'" in line["error"] and "true or false" in line["error"]
    assert not record(r, publisher).get("paused")
    assert car.stop() == 0


# -- the request's own checks (pure) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({"position": "now"}, ["spec.restartFrom.id", "required"]),
        ({"id": " ", "position": "now"}, ["spec.restartFrom.id", "required"]),
        ({"id": "a"}, ["exactly one of position", "time"]),
        ({"id": "a", "position": "now", "time": "2026-12-01T10:00:00Z"}, ["exactly one of"]),
        ({"id": "a", "position": "earliest"}, ["spec.restartFrom.position", "'earliest'", "now"]),
        ({"id": "a", "time": "yesterday"}, ["spec.restartFrom.time", "RFC 3339", "2026-12-01T10"]),
        ({"id": "a", "time": "2026-12-01T10:00:00"}, ["spec.restartFrom.time", "with a zone"]),
        ({"id": "a", "time": "2026-12-01"}, ["spec.restartFrom.time", "RFC 3339"]),
        ({"id": "a", "time": 5}, ["spec.restartFrom.time", "RFC 3339 string"]),
        ("now", ["spec.restartFrom must be an object"]),
    ],
)
def test_bad_restart_requests_are_refused_naming_the_field(value: Any, words: list[str]) -> None:
    with pytest.raises(ControlError) as caught:
        parse_restart(value)
    for word in words:
        assert word in str(caught.value), str(caught.value)


def test_restart_request_times() -> None:
    request = parse_restart({"id": "a", "time": "2026-12-01T11:00:00.750+01:00"})
    assert request.timestamp() is not None and request.timestamp().time == int(
        datetime(2026, 12, 1, 10, tzinfo=UTC).timestamp()
    )  # rounded down to the second
    now = datetime(2026, 12, 1, 9, tzinfo=UTC)
    problem = request.future_problem(now)
    assert problem is not None and "future" in problem and "position: now" in problem
    assert request.future_problem(now + timedelta(hours=2)) is None
    assert RestartRequest("b", position="now").future_problem(now) is None
    same = ControlRecord.from_json(ControlRecord(True, request).to_json())
    assert same == ControlRecord(True, request)

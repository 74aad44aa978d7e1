"""Failures of ``liberator publish`` and how it recovers, on the real local servers: crashes,
failover, Redis and Pub/Sub outages, poison documents, bad configuration, a lost resume point."""

from __future__ import annotations

import json
import random
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import redis
from bson import Decimal128, ObjectId, Regex
from bson.binary import Binary
from pymongo import MongoClient
from pymongo.database import Database

from liberator_publisher.core.contract import status_key
from liberator_publisher.state.checkpoint import CHECKPOINT_COLLECTION
from liberator_stack import Stack
from liberator_stack.process import free_port
from tests.support.publisher import Collector, Publisher, Sidecar, eventually
from tests.test_publisher.test_publish_e2e import check_order

LOG_ENTITY = {"LIBERATOR_ID_FIELD": "entity"}
# A resume token in MongoDB's format from some other server: this one cannot resume from it.
REJECTED_TOKEN = {"_data": "826A1B2C3D000000012B0229296E04"}


class Writer:
    """Inserts ``total`` versions of ``entities`` entities in the background, in small batches."""

    def __init__(
        self,
        db: Database[dict[str, Any]],
        collection: str,
        total: int,
        *,
        entities: int = 50,
        chunk: int = 25,
        pause: float = 0.0,
    ) -> None:
        self.docs = [{"entity": f"e{i % entities}", "seq": i} for i in range(total)]
        self._coll = db[collection]
        self._chunk, self._pause = chunk, pause
        self.written = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for start in range(0, len(self.docs), self._chunk):
            self._coll.insert_many([dict(d) for d in self.docs[start : start + self._chunk]])
            self.written = min(len(self.docs), start + self._chunk)
            if self._pause:
                time.sleep(self._pause)

    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self) -> None:
        self._thread.join(timeout=300)
        assert not self._thread.is_alive()


def grpc_loaded(car: Sidecar) -> bool:
    """Whether the process has grpc's C library mapped (the Pub/Sub client is imported)."""
    assert car.popen is not None
    maps = Path(f"/proc/{car.popen.pid}/maps").read_text()
    return "cygrpc" in maps


def leader_of(cars: list[Sidecar]) -> Sidecar | None:
    leaders = [c for c in cars if c.alive() and c.is_leader()]
    return leaders[0] if len(leaders) == 1 else None


# -- crashes and failover --------------------------------------------------------------------


def test_sigkill_at_random_points_loses_nothing_and_keeps_order(
    publisher: Publisher, collector: Collector, db: Database[dict[str, Any]]
) -> None:
    total = 5000
    car = publisher.start(**LOG_ENTITY)
    writer = Writer(db, publisher.collection, total, pause=0.01)
    rng = random.Random(7)
    kills_mid_run = 0
    for _ in range(3):
        time.sleep(rng.uniform(1.0, 4.0))
        kills_mid_run += not writer.done()
        car.kill()
        car = publisher.start(**LOG_ENTITY)
    writer.join()
    assert kills_mid_run >= 1  # the crashes hit a running stream, not an idle one
    eventually(lambda: len(collector.ids()) >= total, what=f"all {total} events", deadline=180)
    check_order(collector.snapshot(), total)
    outbox = db[publisher.outbox]
    # The outbox has exactly one event per change, however often the changes were re-read.
    assert outbox.count_documents({}) == total
    eventually(
        lambda: outbox.count_documents({"status": "published"}) == total,
        what="every outbox event marked published",
    )


def test_standby_takes_over_when_the_leader_dies_and_a_paused_leader_is_fenced(
    publisher: Publisher, collector: Collector, db: Database[dict[str, Any]]
) -> None:
    cars = [publisher.start(**LOG_ENTITY), publisher.start(**LOG_ENTITY)]
    first = eventually(lambda: leader_of(cars), what="one leader")
    standby = cars[1] if first is cars[0] else cars[0]
    assert standby.get("/readyz")[0] == 200  # standbys are ready too
    assert standby.get("/healthz") == (200, "ok (standby)\n")
    quotes = db[publisher.collection]
    quotes.insert_many([{"entity": "a", "seq": i} for i in range(100)])
    eventually(lambda: len(collector.ids()) >= 100, what="first 100 events")
    # While the holder renews, a standby leaves the Pub/Sub client (grpc, 35-40 MiB) unloaded.
    assert not grpc_loaded(standby), "the standby imported the Pub/Sub client while idle"
    assert grpc_loaded(first)

    # SIGKILL the leader: the standby leads within TTL + 1 s (3 s here), nothing is lost.
    first.kill()
    killed_at = time.monotonic()
    eventually(standby.is_leader, what="the standby leads", every=0.05)
    takeover = time.monotonic() - killed_at
    print(f"measured takeover after SIGKILL: {takeover:.2f}s (TTL 3 s)")
    # It imported the client when the holder missed its renewals, before the lease was free.
    lines = standby.log_lines()
    events = [line.get("event", "") for line in lines]
    warmed = events.index("importing the Pub/Sub client")
    assert lines[warmed]["reason"] == "the holder has missed renewals", lines[warmed]
    assert warmed < events.index("leading"), events
    quotes.insert_many([{"entity": "a", "seq": i} for i in range(100, 200)])
    eventually(lambda: len(collector.ids()) >= 200, what="events after the takeover")

    # A third replica joins; then SIGSTOP the leader past its TTL and wake it up.
    third = publisher.start(**LOG_ENTITY)
    standby.signal(signal.SIGSTOP)
    try:
        eventually(
            third.is_leader, what="the third replica leads while the leader is frozen", deadline=30
        )
        quotes.insert_many([{"entity": "a", "seq": i} for i in range(200, 300)])
        eventually(lambda: len(collector.ids()) >= 300, what="events while the old one sleeps")
    finally:
        standby.signal(signal.SIGCONT)
    checkpoints = db[CHECKPOINT_COLLECTION]
    new_epoch = int(third.metric("liberator_epoch") or 0)
    eventually(lambda: not standby.is_leader(), what="the woken replica knows it lost")
    quotes.insert_many([{"entity": "a", "seq": i} for i in range(300, 400)])
    eventually(lambda: len(collector.ids()) >= 400, what="events after the old leader woke")
    # The woken leader never moved a checkpoint back to its epoch.
    loops = {"_id": {"$regex": "^test/.*#(capture|relay)$"}}
    epochs = {d["_id"]: d["epoch"] for d in checkpoints.find(loops)}
    assert epochs and set(epochs.values()) == {new_epoch}, epochs
    events = [line.get("event", "") for line in standby.log_lines()]
    assert any("lease" in e or "newer" in e for e in events), events
    check_order(collector.snapshot(), 400)


def test_redis_outage_stops_the_loops_and_leadership_returns(
    stack: Stack, publisher: Publisher, collector: Collector, db: Database[dict[str, Any]]
) -> None:
    car = publisher.start(**LOG_ENTITY)
    eventually(car.is_leader, what="leader")
    quotes = db[publisher.collection]
    quotes.insert_many([{"entity": "r", "seq": i} for i in range(50)])
    eventually(lambda: len(collector.ids()) >= 50, what="first events")
    port = int(stack.servers["redis"].details["port"])
    stack.stop("redis")
    try:
        stopped_at = time.monotonic()
        eventually(
            lambda: car.metric("liberator_leader") == 0.0,
            what="the leader stops its loops without Redis",
            every=0.05,
        )
        print(f"loops stopped {time.monotonic() - stopped_at:.2f}s after Redis went down (TTL 3 s)")
        # Changes made meanwhile wait in MongoDB.
        quotes.insert_many([{"entity": "r", "seq": i} for i in range(50, 100)])
        time.sleep(1.0)
        assert car.alive() and car.get("/readyz")[0] == 200
    finally:
        stack.start("redis", port)
    eventually(car.is_leader, what="leadership returns with Redis", deadline=30)
    eventually(lambda: len(collector.ids()) >= 100, what="the changes made during the outage")
    check_order(collector.snapshot(), 100)


def test_pubsub_restart_events_wait_in_the_outbox(
    stack: Stack, publisher: Publisher, collector: Collector, db: Database[dict[str, Any]]
) -> None:
    car = publisher.start(**LOG_ENTITY)
    quotes = db[publisher.collection]
    quotes.insert_many([{"entity": "p", "seq": i} for i in range(20)])
    eventually(lambda: len(collector.ids()) >= 20, what="events before the restart")
    stack.restart("pubsub")
    quotes.insert_many([{"entity": "p", "seq": i} for i in range(20, 60)])
    outbox = db[publisher.outbox]
    eventually(lambda: outbox.count_documents({}) >= 60, what="captured during the outage")
    # The emulator forgets topics when it restarts; real Pub/Sub would not need this step.
    # Frozen meanwhile: a publish between the topic and its subscription would reach no one.
    car.signal(signal.SIGSTOP)
    try:
        publisher.topic.create()
    finally:
        car.signal(signal.SIGCONT)
    eventually(
        lambda: outbox.count_documents({"status": "published"}) == 60,
        what="the outbox drains once Pub/Sub is back",
        deadline=90,
    )
    eventually(
        lambda: len({m.ce_id for m in collector.snapshot()}) >= 60, what="events after the restart"
    )
    assert car.alive()
    # Events published before the subscription was recreated are gone with the old emulator
    # state; what matters is that the outbox kept them until an ack and sent them in order.
    after = [m for m in collector.snapshot() if m.json()["seq"] >= 20]
    assert {m.json()["seq"] for m in after} == set(range(20, 60))
    firsts: list[int] = []
    for m in after:
        if m.json()["seq"] not in firsts:
            firsts.append(m.json()["seq"])
    assert firsts == sorted(firsts)


# -- poison documents ------------------------------------------------------------------------


def test_poison_documents_fail_with_a_reason_and_later_events_still_arrive(
    publisher: Publisher, collector: Collector, db: Database[dict[str, Any]]
) -> None:
    car = publisher.start()
    quotes = db[publisher.collection]
    too_big = {"_id": "too-big", "blob": "x" * 11_000_000}
    huge_correlation = {"_id": "huge-attr", "_event": {"correlationId": "c" * 2000}}
    odd_but_fine = {
        "_id": "odd-types",
        "d": Decimal128("1.10"),
        "b": Binary(b"\x00\x01"),
        "nan": float("nan"),
        "oid": ObjectId("64b000000000000000000000"),
        "re": Regex("^a", "i"),
        "key.with.dot": 1,
    }
    bad_type = {"_id": "bad-type", "_event": {"type": 42}}
    for doc in (too_big, huge_correlation, odd_but_fine, bad_type):
        quotes.insert_one(doc)
    quotes.insert_one({"_id": "after", "n": 1})
    eventually(
        lambda: {m.ordering_key for m in collector.snapshot()} >= {"odd-types", "after"},
        what="the good events",
    )
    outbox = db[publisher.outbox]
    failed = {d["entityId"]: d["reason"] for d in outbox.find({"status": "failed"})}
    assert set(failed) == {"too-big", "huge-attr", "bad-type"}
    assert "10000000" in failed["too-big"] or "bytes" in failed["too-big"]
    assert "ce-correlationid" in failed["huge-attr"] and "1024" in failed["huge-attr"]
    assert "type" in failed["bad-type"]
    odd = next(m for m in collector.snapshot() if m.ordering_key == "odd-types").json()
    assert odd["d"] == {"$numberDecimal": "1.10"} and odd["nan"] == {"$numberDouble": "NaN"}
    assert odd["key.with.dot"] == 1
    eventually(
        lambda: car.metric("liberator_events_failed_total", 'stage="capture"') == 3.0,
        what="3 failures counted",
    )


# -- configuration and fatal errors ----------------------------------------------------------


def test_missing_variable_exits_2_with_one_line_naming_it(publisher: Publisher) -> None:
    car = publisher.sidecar()
    del car.env["LIBERATOR_TOPIC"]
    car.start()
    assert car.popen is not None and car.popen.wait(timeout=60) == 2
    lines = car.output().strip().splitlines()
    assert len(lines) == 1 and "LIBERATOR_TOPIC" in lines[0], lines


def test_malformed_uri_exits_2_naming_the_variable(publisher: Publisher) -> None:
    car = publisher.sidecar(LIBERATOR_MONGO_URI="http://not-mongo")
    car.start()
    assert car.popen is not None and car.popen.wait(timeout=60) == 2
    lines = car.output().strip().splitlines()
    assert len(lines) == 1 and "LIBERATOR_MONGO_URI" in lines[0], lines


def test_unknown_flag_exits_2_naming_it(publisher: Publisher) -> None:
    car = publisher.sidecar("--exit-on-fatl").start()
    assert car.popen is not None and car.popen.wait(timeout=60) == 2
    assert "--exit-on-fatl" in car.output()


def test_http_port_in_use_exits_2_naming_the_variable(publisher: Publisher) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        car = publisher.sidecar(LIBERATOR_HTTP_PORT=str(taken.getsockname()[1])).start()
        assert car.popen is not None and car.popen.wait(timeout=60) == 2
    lines = car.output().strip().splitlines()
    assert len(lines) == 1 and "LIBERATOR_HTTP_PORT" in lines[0], lines


def test_unreachable_mongo_exits_non_zero_within_bounded_time(publisher: Publisher) -> None:
    car = publisher.sidecar(
        LIBERATOR_MONGO_URI=f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"
    )
    car.start()
    assert car.popen is not None and car.popen.wait(timeout=60) == 1
    lines = car.output().strip().splitlines()
    assert len(lines) == 1 and "LIBERATOR_MONGO_URI" in lines[0] and "reach" in lines[0], lines


def parked_health(car: Sidecar) -> tuple[int, str] | None:
    reply = car.get("/healthz")
    return reply if "parked" in reply[1] else None


def parked_record(r: redis.Redis, publisher: str) -> bytes | None:
    value = r.get(status_key(publisher))
    return value if value and json.loads(value)["parked"] else None


def _plant_rejected_token(db: Database[dict[str, Any]], publisher: Publisher) -> None:
    # A resume token the server does not know: as when the position fell off the oplog. The
    # emulator never raises ChangeStreamHistoryLost (286) itself; a token it cannot resume from
    # takes the same path (source.classify maps both to a park).
    db[CHECKPOINT_COLLECTION].insert_one(
        {"_id": f"{publisher.name}#capture", "token": REJECTED_TOKEN, "epoch": 0}
    )


def test_lost_resume_point_parks_alive_with_the_reason_everywhere(
    publisher: Publisher, db: Database[dict[str, Any]]
) -> None:
    _plant_rejected_token(db, publisher)
    car = publisher.start()
    code, body = eventually(lambda: parked_health(car), what="parked in /healthz")
    assert code == 200 and "capture" in body and "recovery" in body
    assert car.get("/readyz")[0] == 200
    metric_lines = [
        line
        for line in car.get("/metrics")[1].splitlines()
        if line.startswith("liberator_parked{") and not line.endswith(" 0.0")
    ]
    assert metric_lines == ['liberator_parked{reason="resume_token_rejected"} 1.0'], metric_lines
    with redis.Redis.from_url(publisher.env["LIBERATOR_REDIS_URL"]) as r:
        record = eventually(
            lambda: parked_record(r, publisher.name), what="parked in the status record"
        )
    assert "recovery" in json.loads(record)["parked"]
    parked_lines = [line for line in car.log_lines() if line.get("event", "").startswith("PARKED")]
    assert len(parked_lines) == 1
    # The capture checkpoint was not replaced by "now".
    assert (
        db[CHECKPOINT_COLLECTION].find_one({"_id": f"{publisher.name}#capture"})["token"]
        == REJECTED_TOKEN
    )
    assert car.alive()

    # Recovery (after an EventSeed): reset the checkpoints. The parked leader notices and
    # captures again from the current position, without a restart.
    reset = publisher.sidecar("--reset-checkpoint").start()
    assert reset.popen is not None and reset.popen.wait(timeout=60) == 0
    assert "removed 2 checkpoint(s)" in reset.output()
    eventually(lambda: car.get("/healthz")[1].startswith("ok (leader"), what="resumed")
    eventually(publisher.capturing, what="capturing from a fresh position")
    db[publisher.collection].insert_one({"_id": "after-reset"})
    outbox = db[publisher.outbox]
    eventually(
        lambda: outbox.find_one({"entityId": "after-reset", "status": "published"}),
        what="publishing again after the reset",
    )
    assert not [
        line
        for line in car.get("/metrics")[1].splitlines()
        if line.startswith("liberator_parked{") and not line.endswith(" 0.0")
    ]
    assert car.stop() == 0


def test_lost_resume_point_under_exit_on_fatal_exits_non_zero(
    publisher: Publisher, db: Database[dict[str, Any]]
) -> None:
    _plant_rejected_token(db, publisher)
    car = publisher.sidecar("--exit-on-fatal").start()
    assert car.popen is not None and car.popen.wait(timeout=60) == 3
    assert any(line.get("event", "").startswith("PARKED") for line in car.log_lines())


def test_damaged_checkpoint_document_parks_naming_the_field(
    publisher: Publisher, db: Database[dict[str, Any]]
) -> None:
    db[CHECKPOINT_COLLECTION].insert_one(
        {"_id": f"{publisher.name}#capture", "token": "not-a-token", "epoch": 0}
    )
    car = publisher.start()
    _, body = eventually(lambda: parked_health(car), what="parked")
    assert "'token'" in body and "checkpoint" in body


def test_a_collection_that_does_not_exist_is_named_in_the_log(
    publisher: Publisher, collector: Collector
) -> None:
    # A typo in LIBERATOR_COLLECTION would look like a quiet collection: the log says it.
    car = publisher.start(LIBERATOR_COLLECTION="qoutes")
    warnings = [line for line in car.log_lines() if "does not exist yet" in line.get("event", "")]
    assert len(warnings) == 1
    assert f"{publisher.database}.qoutes" in warnings[0]["event"]
    assert "LIBERATOR_COLLECTION" in warnings[0]["event"]
    with MongoClient(publisher.env["LIBERATOR_MONGO_URI"]) as client:  # created later: captured
        client[publisher.database]["qoutes"].insert_one({"_id": "first"})
    eventually(
        lambda: {m.attributes["ce-subject"] for m in collector.snapshot()} == {"first"},
        what="the first change of the new collection published",
    )
    assert car.alive()

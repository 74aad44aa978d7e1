"""A lost resume point, end to end on real servers: no injected error, a bounded oplog.

The MongoDB stand-in runs with a small oplog cap (hack/liberator_stack's ``mongo.start(...,
oplog_max_entries=...)``). A stopped sidecar misses enough writes that its capture checkpoint
falls off the oplog; on restart MongoDB (and the stand-in) answer 286 ChangeStreamHistoryLost. The
sidecar must park alive and ready, say why everywhere, and recover through the documented
``liberator publish --reset-checkpoint``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from liberator_publisher.core.contract import status_key
from liberator_publisher.state.checkpoint import CHECKPOINT_COLLECTION
from liberator_stack import Server
from tests.support.publisher import Collector, Publisher, eventually

CAP = 200
"""Oplog entries kept (the bounded_mongo fixture reads it): room for the sidecar's own writes, few
enough to trim quickly."""


def test_a_trimmed_checkpoint_parks_the_sidecar_and_reset_recovers(
    bounded_publisher: Publisher, bounded_mongo: Server
) -> None:
    publisher = bounded_publisher
    collector = Collector(publisher.topic)
    client: MongoClient[dict[str, Any]] = MongoClient(bounded_mongo.exports["LIBERATOR_MONGO_URI"])
    try:
        db = client[publisher.database]
        outbox = db[publisher.outbox]
        car = publisher.start()
        db[publisher.collection].insert_many([{"_id": f"q{i}"} for i in range(5)])
        eventually(
            lambda: outbox.count_documents({"status": "published"}) == 5,
            what="the first writes published",
        )
        assert car.stop() == 0

        checkpoint = db[CHECKPOINT_COLLECTION].find_one({"_id": f"{publisher.name}#capture"})
        assert checkpoint is not None and checkpoint.get("token")
        token = checkpoint["token"]
        # While the sidecar is down the collection gets more writes than the oplog keeps.
        db[publisher.collection].insert_many([{"_id": f"m{i}"} for i in range(CAP + 50)])
        with pytest.raises(OperationFailure) as caught:  # the server's answer, as MongoDB's
            db[publisher.collection].watch(resume_after=token).try_next()
        assert caught.value.code == 286

        restarted = publisher.sidecar().start().wait_ready()
        code, body = eventually(
            lambda: reply if "parked" in (reply := restarted.get("/healthz"))[1] else None,
            what="parked in /healthz",
        )
        assert code == 200 and "history_lost" in body and "--reset-checkpoint" in body
        assert restarted.get("/readyz")[0] == 200
        assert restarted.metric("liberator_parked", 'reason="history_lost"') == 1.0
        with redis.Redis.from_url(publisher.env["LIBERATOR_REDIS_URL"]) as r:
            record = eventually(
                lambda: (
                    v
                    if (v := r.get(status_key(publisher.name))) and json.loads(v)["parked"]
                    else None
                ),
                what="parked in the status record",
            )
        assert "history_lost" in json.loads(record)["parked"]
        # Parked, not restarted from "now": the checkpoint is the one that was lost.
        assert (
            db[CHECKPOINT_COLLECTION].find_one({"_id": f"{publisher.name}#capture"})["token"]
            == checkpoint["token"]
        )
        assert restarted.alive()

        # The documented recovery (after an EventSeed for the missed writes).
        reset = publisher.sidecar("--reset-checkpoint").start()
        assert reset.popen is not None and reset.popen.wait(timeout=60) == 0
        eventually(
            lambda: restarted.get("/healthz")[1].startswith("ok (leader"),
            what="capturing again after the reset",
        )
        eventually(publisher.capturing, what="a fresh capture position")
        db[publisher.collection].insert_one({"_id": "after-reset"})
        eventually(
            lambda: outbox.find_one({"entityId": "after-reset", "status": "published"}),
            what="the new write published",
        )
        eventually(
            lambda: any(
                m.attributes.get("ce-subject") == "after-reset" for m in collector.snapshot()
            ),
            what="the new write's event on Pub/Sub",
        )
        assert restarted.metric("liberator_parked", 'reason="history_lost"') == 0.0
        assert restarted.stop() == 0
    finally:
        collector.close()
        client.close()

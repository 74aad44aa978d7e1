"""The capture stream's position when a seed starts, recorded in its ledger checkpoint, so live
capture and the seed overlap (no gap between them).

Read only: the sidecar's capture checkpoint is read, never written.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from bson import json_util
from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from liberator_publisher.state.checkpoint import CHECKPOINT_COLLECTION, CheckpointError, Checkpoints

__all__ = ["capture_position"]

log = logging.getLogger("liberator_publisher.seed.seeder")  # the seed's lines share one logger


def capture_position(collection: Collection[dict[str, Any]], publisher: str) -> dict[str, Any]:
    """The capture stream's position now, so live capture and the seed overlap (no gap).

    Recorded: the running sidecar's capture checkpoint (read only; absent when no sidecar has
    captured yet), a fresh change stream's resume token (MongoDB gives one even on a quiet
    stream; mongo-java-server does not), and the time.
    """
    now = datetime.now(UTC)
    position: dict[str, Any] = {"time": now, "publisherCheckpoint": None, "resumeToken": None}
    try:
        saved = Checkpoints(collection.database[CHECKPOINT_COLLECTION], publisher).load("capture")
        if not saved.empty:
            position["publisherCheckpoint"] = json_util.dumps(
                {"token": saved.token, "operationTime": saved.operation_time}
            )
    except (PyMongoError, CheckpointError) as error:
        log.warning("cannot read the sidecar's capture checkpoint: %s", error)
    try:
        with collection.watch(max_await_time_ms=1) as stream:
            stream.try_next()
            if stream.resume_token is not None:
                position["resumeToken"] = json_util.dumps(stream.resume_token)
    except PyMongoError as error:
        log.info("no change stream position recorded (%s); the time stands for it", error)
    return position

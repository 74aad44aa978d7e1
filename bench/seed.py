"""Seed throughput against B_ins (docs/targets.md: at least 0.8 x B_ins docs/s), from one run.

``python -m bench.seed [--docs N]`` from the repo root starts MongoDB (mongo-java-server), the
Pub/Sub emulator and Redis, measures B_ins (raw ``insert_many``), then seeds N entities in
``latest`` mode and in ``history`` mode (N/4 entities x 4 versions) and prints docs/s and ratios.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack"))

from google.cloud import pubsub_v1  # noqa: E402
from pymongo import MongoClient  # noqa: E402

from bench.baselines import b_ins, quote  # noqa: E402
from liberator_publisher.core.settings import Settings  # noqa: E402
from liberator_publisher.seed.options import SeedOptions  # noqa: E402
from liberator_publisher.seed.seeder import run_seed  # noqa: E402
from liberator_stack import Stack  # noqa: E402


def seed_rate(env: dict[str, str], mode: str, entities: int, versions: int) -> tuple[int, float]:
    """(documents scanned, seconds) of one seed over a fresh collection."""
    settings = Settings.from_env(
        {**env, "LIBERATOR_COLLECTION": f"quotes_{mode}", "LIBERATOR_TOPIC": "unused"}
    )
    client: MongoClient[dict[str, Any]] = MongoClient(settings.mongo_uri)
    coll = client[settings.database][settings.collection]
    docs = [{**quote(i), "version": v} for v in range(1, versions + 1) for i in range(entities)]
    for start in range(0, len(docs), 1000):
        coll.insert_many(docs[start : start + 1000], ordered=False)
    publisher = pubsub_v1.PublisherClient()
    admin = pubsub_v1.SubscriberClient()
    topic = publisher.create_topic(
        name=publisher.topic_path(settings.pubsub_project, f"bench-seed-{mode}-{settings.database}")
    ).name
    admin.create_subscription(
        request={
            "name": admin.subscription_path(
                settings.pubsub_project, f"bench-seed-{mode}-{settings.database}"
            ),
            "topic": topic,
            "enable_message_ordering": True,
        }
    )
    start = time.perf_counter()
    summary = run_seed(
        settings, SeedOptions(topic=topic.rsplit("/", 1)[1], mode=mode, seed_id=f"bench-{mode}")
    )
    elapsed = time.perf_counter() - start
    assert summary.scanned == len(docs), summary
    client.close()
    return summary.scanned, elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000, help="documents per measurement")
    args = parser.parse_args()
    with Stack(Path(tempfile.mkdtemp(prefix="liberator-bench-seed-"))) as stack:
        # LIBERATOR_TEST_MONGO_URI points at a real MongoDB (as for the tests).
        real = os.environ.get("LIBERATOR_TEST_MONGO_URI")
        servers = ("pubsub", "redis") if real else ("mongo", "pubsub", "redis")
        exports = stack.up(servers)
        if real:
            exports["LIBERATOR_MONGO_URI"] = real
        os.environ.update(exports)
        database = f"benchseed{uuid.uuid4().hex[:8]}"  # fresh, even on a reused server
        env = {
            **exports,
            "LIBERATOR_DATABASE": database,
            "LIBERATOR_COLLECTION": "quotes",
            "LIBERATOR_ENTITY_TYPE": "quote",
            "LIBERATOR_ID_FIELD": "quoteId",
            "LIBERATOR_VERSION_FIELD": "version",
            "LIBERATOR_LOG_LEVEL": "WARNING",
        }
        client: MongoClient[dict[str, Any]] = MongoClient(exports["LIBERATOR_MONGO_URI"])
        ins = b_ins(client, database, args.docs)
        print(f"B_ins: {ins.per_second:,.0f} docs/s ({ins.count} docs in {ins.seconds:.2f} s)")
        for mode, entities, versions in (("latest", args.docs, 1), ("history", args.docs // 4, 4)):
            count, seconds = seed_rate(env, mode, entities, versions)
            rate = count / seconds
            print(
                f"seed {mode}: {rate:,.0f} docs/s ({count} docs in {seconds:.2f} s), "
                f"{rate / ins.per_second:.2f} x B_ins (target 0.8)"
            )
        client.drop_database(database)
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

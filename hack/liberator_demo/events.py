"""Steps 5-7 of the demo: quotes written, the leader failed over, a seed; no event lost.

Each step checks the event store (:meth:`liberator_demo.session.Session.live_view`): the demo's
own events, then a ``quote.created`` for every quote in the collection after the leading pod is
deleted mid-write, then one seeded event per quote that existed when the EventSeed was applied.
"""

from __future__ import annotations

import datetime as dt
import time

from bson.decimal128 import Decimal128

from liberator_demo.session import EVENTS_DB, NAMESPACE, QUICKSTART, WAIT, DemoError, Session

SEED = "quotes-initial"


def write_quotes(demo: Session) -> None:
    demo.step(
        5,
        f"the demo writes {demo.quotes} quotes and their changes with pymongo; the "
        "live view shows every event the event store receives, from anyone",
    )
    client = demo.mongo()
    quotes = client["quotes"]["quotes"]
    expected: list[tuple[str, str]] = []
    ids = [f"Q-{1001 + i}" for i in range(demo.quotes)]
    for i, quote_id in enumerate(ids):
        quotes.insert_one(
            {
                "_id": quote_id,
                "version": 1,
                "customer": f"ACME-{i % 3}",
                "amount": Decimal128(f"{1250 + 10 * i}.00"),
                "currency": "EUR",
                "status": "draft",
                "internalNotes": "never published",
                "createdAt": dt.datetime.now(dt.UTC),
            }
        )
        expected.append(("quote.created", quote_id))
    quotes.update_one({"_id": ids[0]}, {"$set": {"amount": Decimal128("1190.00"), "version": 2}})
    expected.append(("quote.updated", ids[0]))
    # The service names the business event in the document's _event field.
    quotes.update_one(
        {"_id": ids[1]},
        {
            "$set": {
                "status": "purchased",
                "version": 2,
                "_event": {"type": "quote.purchased", "correlationId": "order-77"},
            }
        },
    )
    expected.append(("quote.purchased", ids[1]))
    quotes.update_one({"_id": ids[2]}, {"$set": {"status": "sent", "version": 2}})
    expected.append(("quote.updated", ids[2]))
    quotes.delete_one({"_id": ids[-1]})
    expected.append(("quote.deleted", ids[-1]))
    print(f"      {'type':<18} {'subject':<35} {'version':>7} {'latency':>8}  ce-id", flush=True)
    demo.live_view(client, lambda seen: set(expected) <= seen, "the demo's events")
    print(f"      all {len(expected)} of the demo's events stored", flush=True)
    client.close()


def take_over(demo: Session) -> None:
    demo.step(
        6, "deleting the leading pod: the other pod's sidecar takes over, and no event is lost"
    )
    old = demo.leader()
    client = demo.mongo()
    quotes = client["quotes"]["quotes"]
    during = [f"T-{i:02d}" for i in range(10)]
    quotes.insert_many([{"_id": i, "version": 1, "status": "draft"} for i in during[:5]])
    started = time.monotonic()
    demo.kubectl("-n", NAMESPACE, "delete", "pod", old, "--wait=false")
    print(f"      $ kubectl -n {NAMESPACE} delete pod {old}", flush=True)
    quotes.insert_many([{"_id": i, "version": 1, "status": "draft"} for i in during[5:]])
    new = demo.leader(other_than=old)
    print(
        f"      the lead moved from {old} to {new} "
        f"{time.monotonic() - started:.1f}s after the delete",
        flush=True,
    )
    # Every quote ever inserted (by the app pods, the demo, now) has one created event.
    inserted = {d["_id"] for d in quotes.find({}, {"_id": 1})} | {f"Q-{1000 + demo.quotes}"}
    demo.live_view(
        client,
        lambda seen: inserted <= {s for t, s in seen if t == "quote.created"},
        "the created events of every quote",
    )
    events = client[EVENTS_DB]["liberator_events"]
    live = {"attributes.ce-seed": {"$exists": False}}
    created = set(events.distinct("subject", {**live, "type": "quote.created"}))
    distinct = len(events.distinct("_id", live))
    lost = inserted - created
    if lost:
        raise DemoError(f"events lost in the takeover: {sorted(lost)}")
    print(
        f"      {len(inserted)} quotes inserted so far (app pods, the demo, 10 around the "
        f"delete): {len(inserted & created)} distinct quote.created events in the event "
        f"store, none lost ({distinct} distinct events in all)",
        flush=True,
    )
    client.close()


def seed(demo: Session) -> None:
    demo.step(
        7,
        "applying EventSeed 'quotes-initial': the operator makes a Job, the Job "
        "controller runs it to Complete, every existing quote goes once to the "
        "seed topic",
    )
    client = demo.mongo()
    existing = {d["_id"] for d in client["quotes"]["quotes"].find({}, {"_id": 1})}
    demo.kubectl("apply", "-f", str(QUICKSTART / "40-eventseed.yaml"))
    job = demo.wait(
        "the seed Job",
        lambda: (
            demo.kube_json("-n", NAMESPACE, "get", "eventseed", SEED).get("status", {}).get("job")
        ),
        60,
    )
    print(f"      the operator created Job {job}", flush=True)
    last = ""
    deadline = time.monotonic() + WAIT
    with demo.progress("waiting for the seed Job"):
        while time.monotonic() < deadline:
            status = demo.kube_json("-n", NAMESPACE, "get", "eventseed", SEED).get("status", {})
            job_status = demo.kube_json("-n", NAMESPACE, "get", "job", job).get("status", {})
            line = (
                f"EventSeed phase={status.get('phase')} seeded={status.get('seeded', 0)}"
                f"; Job active={job_status.get('active', 0)} "
                f"succeeded={job_status.get('succeeded', 0)}"
            )
            if line != last:
                print(f"      {line}", flush=True)
                last = line
            if status.get("phase") in ("Succeeded", "Failed"):
                break
            time.sleep(1)
    if status.get("phase") != "Succeeded":
        raise DemoError(
            f"EventSeed {SEED} is {status.get('phase')}: kubectl -n "
            f"{NAMESPACE} describe eventseed {SEED}; kubectl -n {NAMESPACE} "
            f"logs job/{job}"
        )
    conditions = {c["type"]: c["status"] for c in job_status.get("conditions", [])}
    if conditions.get("Complete") != "True":
        raise DemoError(f"EventSeed Succeeded but Job {job} is not Complete: {job_status}")
    print(
        f"      EventSeed {SEED}: phase=Succeeded seeded={status.get('seeded')}, from "
        f"Job {job}: Complete (the Job controller's condition)",
        flush=True,
    )
    demo.show("-n", NAMESPACE, "get", "job", job)
    demo.live_view(
        client, lambda seen: existing <= {s for _, s in seen}, "the seeded events", seed=True
    )
    print(f"      all {len(existing)} quotes that existed seeded", flush=True)
    client.close()

"""The EventSeed timer: ensures the seed Job, and copies its phase and the seed's counts into
the status. It is the only writer of the seed's status, so nothing races it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import kopf
import redis

from liberator_operator import conditions as cond
from liberator_operator.datastatus import (
    read_seed_progress,
)
from liberator_operator.job import build_seed_job, job_name, job_phase, seed_id
from liberator_operator.model import (
    GROUP,
    PUBLISHERS,
    VERSION,
    EventSeedSpec,
)
from liberator_operator.runtime import Conditions, Runtime, publisher_of, redis_url_of
from liberator_publisher.core.contract import seed_key

__all__ = ["TERMINAL", "sync_seed"]

TERMINAL = ("Succeeded", "Failed")


def sync_seed(
    rt: Runtime,
    *,
    spec: Mapping[str, Any],
    meta: Mapping[str, Any],
    status: Mapping[str, Any],
    name: str,
    namespace: str,
    patch: kopf.Patch,
    logger: Any,
) -> None:
    seed_spec = cast(EventSeedSpec, dict(spec))
    conds = Conditions(status.get("conditions"), meta.get("generation"))
    patch.status["observedGeneration"] = conds.generation
    publisher_name = seed_spec["publisher"]
    body = rt.cluster.get_custom(GROUP, VERSION, PUBLISHERS, namespace, publisher_name)
    if body is None:
        conds.set(
            cond.PUBLISHER_FOUND,
            False,
            "PublisherNotFound",
            f"EntityPublisher {namespace}/{publisher_name} not found: the seed waits and "
            "starts once it exists; for another publisher, delete this EventSeed and apply "
            "it again with that spec.publisher (the spec is immutable)",
        )
        patch.status["phase"] = status.get("phase") or "Pending"
        patch.status["conditions"] = conds.items
        return
    conds.set(cond.PUBLISHER_FOUND, True, "Found", f"EntityPublisher {publisher_name} exists")
    publisher = publisher_of(namespace, publisher_name, body.get("spec") or {})
    jname = job_name(name)
    job = rt.cluster.get_job(namespace, jname)
    if job is None:
        manifest = build_seed_job(
            namespace,
            name,
            uid=str(meta.get("uid")),
            spec=seed_spec,
            publisher=publisher,
            settings=rt.settings,
        )
        if rt.cluster.create_job(manifest):
            logger.info(f"created Job {jname}")
        job = rt.cluster.get_job(namespace, jname)
    owners = [
        o.get("uid") for o in ((job or {}).get("metadata") or {}).get("ownerReferences") or []
    ]
    if job is not None and meta.get("uid") not in owners:
        conds.set(
            cond.JOB_CREATED,
            False,
            "JobConflict",
            f"Job {jname} exists but belongs to another object: delete it to seed again",
        )
        patch.status["conditions"] = conds.items
        return
    conds.set(cond.JOB_CREATED, True, "Created", f"Job {jname} runs liberator seed")
    phase = job_phase(job)
    job_status: Mapping[str, Any] = (job or {}).get("status") or {}
    patch.status["job"] = jname
    patch.status["phase"] = phase
    start = job_status.get("startTime")
    end = job_status.get("completionTime")
    if phase == "Failed" and not end:
        end = next(
            (
                c.get("lastTransitionTime")
                for c in job_status.get("conditions") or []
                if c.get("type") in ("Failed", "FailureTarget")
            ),
            None,
        )
    url, _ = redis_url_of(rt, publisher)
    if url is not None:
        try:
            progress = read_seed_progress(rt.redis(url), seed_id(namespace, name))
        except redis.RedisError as exc:
            logger.warning(f"cannot read seed progress {seed_key(seed_id(namespace, name))}: {exc}")
            progress = None
        if progress is not None:
            for key, value in (
                ("seeded", progress.seeded),
                ("skipped", progress.skipped),
                ("failed", progress.failed),
                ("total", progress.total),
            ):
                if value is not None:
                    patch.status[key] = value
            start = progress.started_at or start
            end = (progress.completed_at or end) if phase in TERMINAL else None
    if start:
        patch.status["startTime"] = start
    if end and phase in TERMINAL:
        patch.status["completionTime"] = end
    if phase in TERMINAL:
        conds.set(
            cond.COMPLETE,
            phase == "Succeeded",
            phase,
            f"Job {jname} {'succeeded' if phase == 'Succeeded' else 'failed'}",
        )
    patch.status["conditions"] = conds.items

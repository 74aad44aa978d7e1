"""The EventSeed timer: ensures the seed Job, and copies its phase and the seed's counts into
the status. It is the only writer of the seed's status, so nothing races it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import kopf
import redis

from liberator_operator import conditions as cond
from liberator_operator.datastatus import SeedProgress, read_seed_progress
from liberator_operator.job import build_seed_job, job_name, job_phase, seed_id
from liberator_operator.model import (
    GROUP,
    PUBLISHERS,
    VERSION,
    EventSeedSpec,
    Publisher,
)
from liberator_operator.runtime import Conditions, Runtime, Subject, publisher_of, redis_url_of
from liberator_publisher.core.contract import seed_key

__all__ = ["TERMINAL", "sync_seed"]

TERMINAL = ("Succeeded", "Failed")


def sync_seed(rt: Runtime, obj: Subject, *, patch: kopf.Patch, logger: Any) -> None:
    """One tick: find the publisher, ensure the Job, and copy its phase, times and counts."""
    seed_spec = cast(EventSeedSpec, dict(obj.spec))
    conds = obj.conditions()
    patch.status["observedGeneration"] = conds.generation
    publisher = _find_publisher(rt, obj.namespace, seed_spec["publisher"], conds)
    if publisher is None:
        patch.status["phase"] = obj.status.get("phase") or "Pending"
        patch.status["conditions"] = conds.items
        return
    jname = job_name(obj.name)
    job = _ensure_job(rt, obj, seed_spec, publisher, logger)
    if job is not None and not _owned_by(job, obj.meta):
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
    patch.status["job"] = jname
    patch.status["phase"] = phase
    start, end = _job_times(job, phase)
    progress = _read_progress(rt, publisher, seed_id(obj.namespace, obj.name), logger)
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
    if phase in TERMINAL:
        if end:
            patch.status["completionTime"] = end
        conds.set(
            cond.COMPLETE,
            phase == "Succeeded",
            phase,
            f"Job {jname} {'succeeded' if phase == 'Succeeded' else 'failed'}",
        )
    patch.status["conditions"] = conds.items


def _find_publisher(rt: Runtime, namespace: str, name: str, conds: Conditions) -> Publisher | None:
    """The seed's EntityPublisher, with the PublisherFound condition; None while it is missing."""
    body = rt.cluster.get_custom(GROUP, VERSION, PUBLISHERS, namespace, name)
    if body is None:
        conds.set(
            cond.PUBLISHER_FOUND,
            False,
            "PublisherNotFound",
            f"EntityPublisher {namespace}/{name} not found: the seed waits and "
            "starts once it exists; for another publisher, delete this EventSeed and apply "
            "it again with that spec.publisher (the spec is immutable)",
        )
        return None
    conds.set(cond.PUBLISHER_FOUND, True, "Found", f"EntityPublisher {name} exists")
    return publisher_of(namespace, name, body.get("spec") or {})


def _ensure_job(
    rt: Runtime, obj: Subject, spec: EventSeedSpec, publisher: Publisher, logger: Any
) -> Mapping[str, Any] | None:
    """The seed's Job, created when there is none (None if it vanished right after)."""
    jname = job_name(obj.name)
    job = rt.cluster.get_job(obj.namespace, jname)
    if job is None:
        manifest = build_seed_job(
            obj.namespace,
            obj.name,
            uid=str(obj.meta.get("uid")),
            spec=spec,
            publisher=publisher,
            settings=rt.settings,
        )
        if rt.cluster.create_job(manifest):
            logger.info(f"created Job {jname}")
        job = rt.cluster.get_job(obj.namespace, jname)
    return job


def _owned_by(job: Mapping[str, Any], meta: Mapping[str, Any]) -> bool:
    """Whether ``job`` belongs to the seed (a Job of the same name may be someone else's)."""
    owners = [o.get("uid") for o in (job.get("metadata") or {}).get("ownerReferences") or []]
    return meta.get("uid") in owners


def _job_times(job: Mapping[str, Any] | None, phase: str) -> tuple[Any, Any]:
    """(start, end) from the Job's status; a failed Job has no completionTime, so its end is
    when it was marked failed."""
    job_status: Mapping[str, Any] = (job or {}).get("status") or {}
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
    return start, end


def _read_progress(
    rt: Runtime, publisher: Publisher, seed: str, logger: Any
) -> SeedProgress | None:
    """The seed command's progress hash; None without Redis (the next tick tries again)."""
    url, _ = redis_url_of(rt, publisher)
    if url is None:
        return None
    try:
        return read_seed_progress(rt.redis(url), seed)
    except redis.RedisError as exc:
        logger.warning(f"cannot read seed progress {seed_key(seed)}: {exc}")
        return None

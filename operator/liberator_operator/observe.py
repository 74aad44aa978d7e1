"""The EntityPublisher timer: pods and the data plane into the status, and the control record
out to the leader."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

import kopf
import redis

from liberator_operator import conditions as cond
from liberator_operator.datastatus import (
    DataStatus,
    read_status,
    resume_point_condition,
    resume_point_status,
    stall_condition,
)
from liberator_operator.model import (
    GROUP,
    PUBLISHERS,
    VERSION,
    Publisher,
)
from liberator_operator.patch import INJECTED_LABEL, injected_publishers
from liberator_operator.restart import Outcome, control_for, restart_outcome
from liberator_operator.runtime import Conditions, Runtime, Subject, redis_url_of
from liberator_operator.sidecar import container_name, sidecar_running
from liberator_publisher.core.control import ControlRecord, write_control

__all__ = ["observe", "parked_message"]


def _count_pods(rt: Runtime, namespace: str, name: str) -> int:
    """Pods whose sidecar for this publisher runs (what the PODS column shows)."""
    count = 0
    for pod in rt.cluster.list_pods(namespace, f"{INJECTED_LABEL}=true"):
        meta = pod.get("metadata") or {}
        if name in injected_publishers(meta.get("annotations")) and sidecar_running(pod, name):
            count += 1
    return count


def _publishing(
    rt: Runtime,
    publisher: Publisher,
    pods: int,
    control: ControlRecord,
) -> tuple[DataStatus | None, tuple[cond.Status, str, str]]:
    ident = f"{publisher['namespace']}/{publisher['name']}"
    url, why = redis_url_of(rt, publisher)
    if url is None:
        return None, ("Unknown", "RedisSecretMissing", why)
    try:
        # The control record first: the leader reads it on its next renewal.
        write_control(rt.redis(url), ident, control)
        data = read_status(rt.redis(url), ident)
    except redis.RedisError as exc:
        return None, ("Unknown", "RedisUnavailable", f"cannot read the status record: {exc}")
    if data is None:
        if pods == 0:
            return None, ("False", "NoSidecar", "no running pod carries the sidecar")
        return None, (
            "False",
            "NoLeader",
            "no leader has written a status record recently; sidecars may be starting "
            "or unable to reach Redis",
        )
    if data.parked_reason:
        return data, ("False", "Parked", parked_message(publisher, data))
    if data.paused:
        return data, (
            "False",
            "Paused",
            "spec.paused is true: the leader publishes nothing; "
            "capture goes on, and the backlog goes out in order "
            "when it is false",
        )
    return data, ("True", "Leading", f"{data.leader or 'a pod'} leads (epoch {data.epoch})")


def _stall(data: DataStatus | None) -> tuple[cond.Status, str, str]:
    status, reason, message = stall_condition(data)
    return cast(cond.Status, status), reason, message


def _resume_point(data: DataStatus | None) -> tuple[cond.Status, str, str]:
    status, reason, message = resume_point_condition(data)
    return cast(cond.Status, status), reason, message


def parked_message(publisher: Publisher, data: DataStatus) -> str:
    """The Parked condition's message: the cause, and the documented recovery as one command.

    Not "restart the pods": a restart resumes from the same lost position and parks again.
    """
    namespace, name = publisher["namespace"], publisher["name"]
    pod = data.leader or "POD"
    return (
        f"{data.leader or 'the leader'} parked: {data.parked_reason}. Recover (a restart "
        f"parks again): apply an EventSeed for {name} and wait for Succeeded, then set "
        f"spec.restartFrom: {{id: <new id>, position: now}} (the leader resumes from the "
        f"current position; or kubectl exec -n {namespace} {pod} -c {container_name(name)} "
        "-- liberator publish --reset-checkpoint; docs/operations.md)"
    )


def observe(rt: Runtime, obj: Subject, *, body: Any, stopped: Any, logger: Any) -> None:
    """Pods and data plane into the status, written only if the object did not move on.

    ``stopped`` turns true when the object is being deleted (or the operator stops): the tick
    then ends before its slow part, so the finalizer does not wait for it.
    """
    pods = _count_pods(rt, obj.namespace, obj.name)
    if stopped:
        return
    control, refused = control_for(obj.spec, obj.status, datetime.now(UTC))
    data, publishing = _publishing(rt, obj.publisher(), pods, control)
    if stopped:
        return
    done = (data.restart if data else None) or obj.status.get("restart")
    outcome = restart_outcome(obj.spec, refused, data, done)
    conds = _conditions(obj, publishing, data, outcome)
    new = _status(obj.spec, conds, pods=pods, data=data, done=done, outcome=outcome)
    changed = {k: v for k, v in new.items() if obj.status.get(k) != v}
    if conds.items != list(obj.status.get("conditions") or []):
        changed["conditions"] = conds.items
    if not changed:
        return
    written = rt.cluster.patch_custom_status(
        GROUP,
        VERSION,
        PUBLISHERS,
        obj.namespace,
        obj.name,
        status=changed,
        resource_version=str(obj.meta.get("resourceVersion")),
    )
    if not written:
        logger.debug("status moved on meanwhile; the next tick writes the data plane")
        return
    _announce(body, changed, done, outcome)


def _conditions(
    obj: Subject,
    publishing: tuple[cond.Status, str, str],
    data: DataStatus | None,
    outcome: Outcome,
) -> Conditions:
    """The conditions this timer owns; RestartRejected only once there was a request."""
    conds = obj.conditions()
    conds.set(cond.PUBLISHING, *publishing)
    conds.set(cond.STALLED, *_stall(data))
    conds.set(cond.RESUME_POINT_AT_RISK, *_resume_point(data))
    if outcome.status:
        conds.set(
            cond.RESTART_REJECTED,
            cast(cond.Status, outcome.status),
            outcome.reason,
            outcome.message,
        )
    elif cond.find(conds.items, cond.RESTART_REJECTED) is not None:
        conds.set(cond.RESTART_REJECTED, False, "NoRequest", "spec.restartFrom is not set")
    return conds


def _status(
    spec: Mapping[str, Any],
    conds: Conditions,
    *,
    pods: int,
    data: DataStatus | None,
    done: Mapping[str, Any] | None,
    outcome: Outcome,
) -> dict[str, Any]:
    """The status fields this timer owns, as they should be now."""
    return {
        "pods": pods,
        "leader": data.leader if data else None,
        "epoch": data.epoch if data else None,
        "lagSeconds": data.lag_seconds if data else None,
        "backlog": data.backlog if data else None,
        "lastEventTime": data.last_event_time if data else None,
        "parkedReason": data.parked_reason if data else None,
        "captureSince": data.capture_since if data else None,
        "checkpoints": data.checkpoints if data else None,
        "resumePoint": resume_point_status(data),
        "lag": cond.lag_text(data.lag_seconds if data else None),
        "reason": cond.summary_reason(conds.items, paused=bool(spec.get("paused"))),
        "restart": dict(done) if done else None,
        "restartRejected": outcome.rejected,
    }


def _announce(
    body: Any, changed: Mapping[str, Any], done: Mapping[str, Any] | None, outcome: Outcome
) -> None:
    """Events for a restart carried out or newly rejected, once the status says so."""
    if "restart" in changed and done:
        # kopf.event, not kopf.info: posting.level is WARNING, and this one must be seen.
        text = (
            outcome.message
            if outcome.reason == "Done"
            else f"restart {done.get('id')!r} ran at {done.get('doneAt')}"
        )
        kopf.event(body, type="Normal", reason="Restarted", message=text)
    if "restartRejected" in changed and outcome.rejected:
        kopf.warn(body, reason="RestartRejected", message=outcome.message)

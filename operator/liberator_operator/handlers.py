"""The kopf handlers. They gather state and write status; pure builders make the objects.

- EntityPublisher: reconcile on create, update and resume (references, Pub/Sub, conditions);
  a finalizer honouring ``deletionPolicy``; a timer that reads pods and the data plane.
- EventSeed: one timer that ensures the Job and copies its phase and the seed's counts. It is
  the only writer of the seed's status, so nothing races it.
- Pod: the mutating admission webhook that injects the sidecar.

:func:`register` adds them to a registry with the settings bound, so intervals come from
:class:`~liberator_operator.settings.OperatorSettings` rather than from import-time globals.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import jsonpatch
import kopf
import redis

from liberator_operator import conditions as cond
from liberator_operator.cluster import Cluster
from liberator_operator.datastatus import (
    DataStatus,
    connect,
    read_seed_progress,
    read_status,
    resume_point_condition,
    resume_point_status,
    stall_condition,
)
from liberator_operator.job import build_seed_job, job_name, job_phase, seed_id
from liberator_operator.model import (
    GROUP,
    PUBLISHERS,
    SEEDS,
    VERSION,
    Condition,
    EntityPublisherSpec,
    EventSeedSpec,
    Publisher,
)
from liberator_operator.patch import (
    INJECTED_LABEL,
    build_patch,
    injected_publishers,
    skip_reason,
)
from liberator_operator.provisioning import ProvisioningError, PubSubAdmin, build_plan
from liberator_operator.restart import control_for, restart_outcome
from liberator_operator.settings import OperatorSettings
from liberator_operator.sidecar import container_name, sidecar_running
from liberator_operator.webhook import HANDLER_ID
from liberator_publisher.core.contract import control_key, seed_key
from liberator_publisher.core.control import ControlRecord, write_control

__all__ = ["Runtime", "parked_message", "register"]

TERMINAL = ("Succeeded", "Failed")


@dataclass
class Runtime:
    """What the handlers share: settings, the API client, and lazily made clients."""

    settings: OperatorSettings
    """The operator's settings."""
    cluster: Cluster
    """The Kubernetes API."""
    native: bool = True
    """Inject native sidecars; set at startup from the server version (or the setting)."""
    _admin: PubSubAdmin | None = None
    _redis: dict[str, redis.Redis] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def admin(self) -> PubSubAdmin:
        with self._lock:
            if self._admin is None:
                self._admin = PubSubAdmin()
            return self._admin

    def redis(self, url: str) -> redis.Redis:
        with self._lock:
            if url not in self._redis:
                self._redis[url] = connect(url)
            return self._redis[url]

    def close(self) -> None:
        with self._lock:
            if self._admin is not None:
                self._admin.close()
            for client in self._redis.values():
                client.close()


def _publisher(namespace: str, name: str, spec: Mapping[str, Any]) -> Publisher:
    return {"namespace": namespace, "name": name,
            "spec": cast(EntityPublisherSpec, dict(spec))}


def _backoff(retry: int, settings: OperatorSettings) -> float:
    return float(min(settings.backoff_max, 2 ** min(retry, 16)))


class _Conditions:
    """Collects condition changes of one handler run."""

    def __init__(self, current: Any, generation: int | None) -> None:
        self.items: list[Condition] = list(current or [])
        self.generation = generation
        self.now = cond.now_rfc3339()

    def set(self, type_: str, status: bool | cond.Status, reason: str, message: str) -> None:
        self.items = cond.set_condition(self.items, type_, status, reason, message, now=self.now,
                                        generation=self.generation)


# -- EntityPublisher -------------------------------------------------------------------------------

def _reference_problem(rt: Runtime, publisher: Publisher) -> tuple[str, str] | None:
    """A missing Secret (or key) that the sidecar needs, as (reason, message)."""
    namespace, spec = publisher["namespace"], publisher["spec"]
    refs = [("Mongo", "spec.mongo.uriSecretRef", spec["mongo"]["uriSecretRef"], "uri",
             "the MongoDB connection string")]
    redis_ref = spec["redis"].get("secretRef")
    if redis_ref is not None:
        refs.append(("Redis", "spec.redis.secretRef", redis_ref, "url", "the Redis URL"))
    for what, path, ref, default_key, holds in refs:
        key = ref.get("key") or default_key
        keys = rt.cluster.secret_keys(namespace, ref["name"])
        if keys is None:
            return (f"{what}SecretMissing",
                    f"Secret {namespace}/{ref['name']} ({path}) not found: create it with key "
                    f"{key!r} holding {holds}; the operator retries")
        if key not in keys:
            return (f"{what}SecretKeyMissing",
                    f"Secret {namespace}/{ref['name']} has no key {key!r} ({path}.key); it has "
                    f"{', '.join(keys) or 'no keys'}: add the key or fix {path}.key")
    return None


def reconcile(rt: Runtime, *, spec: Mapping[str, Any], meta: Mapping[str, Any],
              status: Mapping[str, Any], name: str, namespace: str, patch: kopf.Patch,
              retry: int, logger: Any) -> None:
    publisher = _publisher(namespace, name, spec)
    conds = _Conditions(status.get("conditions"), meta.get("generation"))

    def flush() -> None:
        patch.status["conditions"] = conds.items
        patch.status["observedGeneration"] = conds.generation

    if spec.get("paused"):
        conds.set(cond.INJECTING, False, "Paused",
                  "spec.paused is true: new pods get no sidecar; running sidecars publish "
                  "nothing (capture goes on) until it is false")
        conds.set(cond.READY, False, "Paused", "spec.paused is true: provisioning is stopped")
        flush()
        return

    problem = _reference_problem(rt, publisher)
    if problem is not None:
        conds.set(cond.READY, False, *problem)
        flush()
        raise kopf.TemporaryError(problem[1], delay=rt.settings.retry_delay)

    plan = build_plan(publisher)
    provisioned = dict(status.get("provisioned") or {})
    topics: list[str] = list(provisioned.get("topics") or [])
    subscriptions: list[str] = list(provisioned.get("subscriptions") or [])

    def fail(condition: str, reason: str, exc: ProvisioningError) -> kopf.TemporaryError:
        conds.set(condition, False, reason, str(exc))
        conds.set(cond.READY, False, reason, f"{condition} is False: {exc}")
        patch.status["provisioned"] = {"topics": topics, "subscriptions": subscriptions}
        flush()
        delay = _backoff(retry, rt.settings) if exc.transient else rt.settings.retry_delay
        logger.warning(f"{exc}; retrying in {delay:.0f}s")
        return kopf.TemporaryError(str(exc), delay=delay)

    admin = rt.admin()
    try:
        for topic in plan.topics:
            if admin.ensure_topic(topic) and topic not in topics:
                topics.append(topic)
    except ProvisioningError as exc:
        raise fail(cond.TOPIC_READY, "PubSubUnavailable" if exc.transient else "TopicError",
                   exc) from exc
    conds.set(cond.TOPIC_READY, True, "TopicsExist", f"{', '.join(plan.topics)} exist")
    try:
        for sub in plan.subscriptions:
            if admin.ensure_subscription(sub) and sub.name not in subscriptions:
                subscriptions.append(sub.name)
    except ProvisioningError as exc:
        raise fail(cond.SUBSCRIPTIONS_READY,
                   "PubSubUnavailable" if exc.transient else "SubscriptionError", exc) from exc
    if plan.subscriptions:
        conds.set(cond.SUBSCRIPTIONS_READY, True, "SubscriptionsExist",
                  f"{len(plan.subscriptions)} subscription(s) exist")
    else:
        conds.set(cond.SUBSCRIPTIONS_READY, True, "NoneDeclared", "no subscriptions declared")
    conds.set(cond.INJECTING, True, "Enabled",
              "new pods matching spec.selector get the sidecar; a rollout applies spec changes "
              "to existing pods")
    conds.set(cond.READY, True, "Provisioned", "references resolved; topics and subscriptions "
                                               "exist")
    patch.status["topic"] = plan.topic
    patch.status["seedTopic"] = plan.seed_topic
    patch.status["subscriptions"] = [s.name for s in plan.subscriptions]
    patch.status["provisioned"] = {"topics": topics, "subscriptions": subscriptions}
    flush()
    logger.info(f"provisioned {len(plan.topics)} topic(s), {len(plan.subscriptions)} "
                f"subscription(s); created {len(topics)} and {len(subscriptions)} so far")


def finalize(rt: Runtime, *, spec: Mapping[str, Any], status: Mapping[str, Any], name: str,
             namespace: str, retry: int, logger: Any) -> None:
    _forget_control(rt, _publisher(namespace, name, spec), logger)
    if spec.get("deletionPolicy", "Retain") != "Delete":
        logger.info("deletionPolicy is Retain: topics and subscriptions are kept")
        return
    # Topics are often shared (integration-events): never delete one another publisher uses.
    in_use: set[str] = set()
    for item in rt.cluster.list_custom(GROUP, VERSION, PUBLISHERS):
        item_meta = item.get("metadata") or {}
        if (item_meta.get("namespace"), item_meta.get("name")) == (namespace, name):
            continue
        if item_meta.get("deletionTimestamp"):
            continue
        other = build_plan(_publisher(item_meta.get("namespace", ""), item_meta.get("name", ""),
                                      item.get("spec") or {}))
        in_use.update(other.topics)
        in_use.update(s.name for s in other.subscriptions)
    provisioned = status.get("provisioned") or {}
    admin = rt.admin()
    try:
        for sub in provisioned.get("subscriptions") or []:
            if sub not in in_use:
                admin.delete_subscription(sub)
        for topic in provisioned.get("topics") or []:
            if topic in in_use:
                logger.info(f"keeping {topic}: another EntityPublisher uses it")
            else:
                admin.delete_topic(topic)
    except ProvisioningError as exc:
        raise kopf.TemporaryError(str(exc), delay=_backoff(retry, rt.settings)) from exc
    logger.info("deletionPolicy is Delete: removed the topics and subscriptions it created")


def _forget_control(rt: Runtime, publisher: Publisher, logger: Any) -> None:
    """Delete the control record (it has no expiry, so a paused record would outlive us)."""
    try:
        url, _ = _redis_url(rt, publisher)
        if url is not None:
            rt.redis(url).delete(control_key(f"{publisher['namespace']}/{publisher['name']}"))
    except Exception as exc:  # Redis away, Secret gone: deletion must not hang on it
        logger.warning(f"could not delete the control record: {exc}")


def _count_pods(rt: Runtime, namespace: str, name: str) -> int:
    """Pods whose sidecar for this publisher runs (what the PODS column shows)."""
    count = 0
    for pod in rt.cluster.list_pods(namespace, f"{INJECTED_LABEL}=true"):
        meta = pod.get("metadata") or {}
        if name in injected_publishers(meta.get("annotations")) and sidecar_running(pod, name):
            count += 1
    return count


def _redis_url(rt: Runtime, publisher: Publisher) -> tuple[str | None, str]:
    """The publisher's Redis URL, or None with the reason."""
    spec = publisher["spec"]["redis"]
    if "url" in spec:
        return spec["url"], ""
    ref = spec["secretRef"]
    key = ref.get("key") or "url"
    value = rt.cluster.secret_value(publisher["namespace"], ref["name"], key)
    if value is None:
        return None, f"Secret {publisher['namespace']}/{ref['name']} key {key!r} not found"
    return value, ""


def _publishing(rt: Runtime, publisher: Publisher, pods: int, control: ControlRecord,
                ) -> tuple[DataStatus | None, tuple[cond.Status, str, str]]:
    ident = f"{publisher['namespace']}/{publisher['name']}"
    url, why = _redis_url(rt, publisher)
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
        return None, ("False", "NoLeader",
                      "no leader has written a status record recently; sidecars may be starting "
                      "or unable to reach Redis")
    if data.parked_reason:
        return data, ("False", "Parked", parked_message(publisher, data))
    if data.paused:
        return data, ("False", "Paused", "spec.paused is true: the leader publishes nothing; "
                                         "capture goes on, and the backlog goes out in order "
                                         "when it is false")
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
    return (f"{data.leader or 'the leader'} parked: {data.parked_reason}. Recover (a restart "
            f"parks again): apply an EventSeed for {name} and wait for Succeeded, then set "
            f"spec.restartFrom: {{id: <new id>, position: now}} (the leader resumes from the "
            f"current position; or kubectl exec -n {namespace} {pod} -c {container_name(name)} "
            "-- liberator publish --reset-checkpoint; docs/operations.md)")


def observe(rt: Runtime, *, body: Any, spec: Mapping[str, Any], meta: Mapping[str, Any],
            status: Mapping[str, Any], name: str, namespace: str, stopped: Any,
            logger: Any) -> None:
    """Pods and data plane into the status, written only if the object did not move on.

    ``stopped`` turns true when the object is being deleted (or the operator stops): the tick
    then ends before its slow part, so the finalizer does not wait for it.
    """
    publisher = _publisher(namespace, name, spec)
    pods = _count_pods(rt, namespace, name)
    if stopped:
        return
    control, refused = control_for(spec, status, datetime.now(UTC))
    data, (state, reason, message) = _publishing(rt, publisher, pods, control)
    if stopped:
        return
    conds = _Conditions(status.get("conditions"), meta.get("generation"))
    conds.set(cond.PUBLISHING, state, reason, message)
    conds.set(cond.STALLED, *_stall(data))
    conds.set(cond.RESUME_POINT_AT_RISK, *_resume_point(data))
    done = (data.restart if data else None) or status.get("restart")
    outcome = restart_outcome(spec, refused, data, done)
    if outcome.status:
        conds.set(cond.RESTART_REJECTED, cast(cond.Status, outcome.status), outcome.reason,
                  outcome.message)
    elif cond.find(conds.items, cond.RESTART_REJECTED) is not None:
        conds.set(cond.RESTART_REJECTED, False, "NoRequest", "spec.restartFrom is not set")
    new: dict[str, Any] = {
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
    changed = {k: v for k, v in new.items() if status.get(k) != v}
    if conds.items != list(status.get("conditions") or []):
        changed["conditions"] = conds.items
    if not changed:
        return
    written = rt.cluster.patch_custom_status(GROUP, VERSION, PUBLISHERS, namespace, name,
                                             status=changed,
                                             resource_version=str(meta.get("resourceVersion")))
    if not written:
        logger.debug("status moved on meanwhile; the next tick writes the data plane")
        return
    if "restart" in changed and done:
        # kopf.event, not kopf.info: posting.level is WARNING, and this one must be seen.
        text = (outcome.message if outcome.reason == "Done"
                else f"restart {done.get('id')!r} ran at {done.get('doneAt')}")
        kopf.event(body, type="Normal", reason="Restarted", message=text)
    if "restartRejected" in changed and new["restartRejected"]:
        kopf.warn(body, reason="RestartRejected", message=outcome.message)


# -- EventSeed --------------------------------------------------------------------------------

def sync_seed(rt: Runtime, *, spec: Mapping[str, Any], meta: Mapping[str, Any],
              status: Mapping[str, Any], name: str, namespace: str, patch: kopf.Patch,
              logger: Any) -> None:
    seed_spec = cast(EventSeedSpec, dict(spec))
    conds = _Conditions(status.get("conditions"), meta.get("generation"))
    patch.status["observedGeneration"] = conds.generation
    publisher_name = seed_spec["publisher"]
    body = rt.cluster.get_custom(GROUP, VERSION, PUBLISHERS, namespace, publisher_name)
    if body is None:
        conds.set(cond.PUBLISHER_FOUND, False, "PublisherNotFound",
                  f"EntityPublisher {namespace}/{publisher_name} not found: the seed waits and "
                  "starts once it exists; for another publisher, delete this EventSeed and apply "
                  "it again with that spec.publisher (the spec is immutable)")
        patch.status["phase"] = status.get("phase") or "Pending"
        patch.status["conditions"] = conds.items
        return
    conds.set(cond.PUBLISHER_FOUND, True, "Found", f"EntityPublisher {publisher_name} exists")
    publisher = _publisher(namespace, publisher_name, body.get("spec") or {})
    jname = job_name(name)
    job = rt.cluster.get_job(namespace, jname)
    if job is None:
        manifest = build_seed_job(namespace, name, uid=str(meta.get("uid")), spec=seed_spec,
                                  publisher=publisher, settings=rt.settings)
        if rt.cluster.create_job(manifest):
            logger.info(f"created Job {jname}")
        job = rt.cluster.get_job(namespace, jname)
    owners = [o.get("uid") for o in ((job or {}).get("metadata") or {}).get("ownerReferences")
              or []]
    if job is not None and meta.get("uid") not in owners:
        conds.set(cond.JOB_CREATED, False, "JobConflict",
                  f"Job {jname} exists but belongs to another object: delete it to seed again")
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
        end = next((c.get("lastTransitionTime") for c in job_status.get("conditions") or []
                    if c.get("type") in ("Failed", "FailureTarget")), None)
    url, _ = _redis_url(rt, publisher)
    if url is not None:
        try:
            progress = read_seed_progress(rt.redis(url), seed_id(namespace, name))
        except redis.RedisError as exc:
            logger.warning(f"cannot read seed progress {seed_key(seed_id(namespace, name))}: {exc}")
            progress = None
        if progress is not None:
            for key, value in (("seeded", progress.seeded), ("skipped", progress.skipped),
                               ("failed", progress.failed), ("total", progress.total)):
                if value is not None:
                    patch.status[key] = value
            start = progress.started_at or start
            end = (progress.completed_at or end) if phase in TERMINAL else None
    if start:
        patch.status["startTime"] = start
    if end and phase in TERMINAL:
        patch.status["completionTime"] = end
    if phase in TERMINAL:
        conds.set(cond.COMPLETE, phase == "Succeeded", phase,
                  f"Job {jname} {'succeeded' if phase == 'Succeeded' else 'failed'}")
    patch.status["conditions"] = conds.items


# -- Pod injection ---------------------------------------------------------------------------------

def inject(rt: Runtime, *, body: Mapping[str, Any], patch: kopf.Patch, warnings: list[str],
           logger: Any) -> None:
    pod = dict(body)
    namespace = (pod.get("metadata") or {}).get("namespace") or ""
    if not namespace or skip_reason(pod, namespace, rt.settings):
        return
    try:
        items = rt.cluster.list_custom(GROUP, VERSION, PUBLISHERS, namespace)
    except Exception as exc:
        # Same outcome as failurePolicy Ignore, but said out loud to whoever created the pod.
        logger.error(f"cannot list EntityPublishers in {namespace}: {exc}")
        warnings.append(f"liberator: sidecar not injected, EntityPublishers unreadable: {exc}")
        return
    publishers = [_publisher(namespace, (i.get("metadata") or {}).get("name", ""),
                             i.get("spec") or {})
                  for i in items if not (i.get("metadata") or {}).get("deletionTimestamp")]
    injection = build_patch(pod, namespace, publishers, rt.settings, native=rt.native)
    if not injection.ops:
        return
    ops = injection.ops
    patch.fns.append(lambda raw: jsonpatch.apply_patch(raw, ops, in_place=True))
    logger.info(f"injecting {', '.join(injection.publishers)} into a pod in {namespace}")


# -- registration ----------------------------------------------------------------------------

def register(registry: kopf.OperatorRegistry, rt: Runtime) -> None:
    """Add every handler to ``registry``, bound to ``rt``."""
    s = rt.settings

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        # A private registry has none of kopf's default handlers: use the kubernetes client's
        # credentials (in-cluster service account, else KUBECONFIG).
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    def detect(logger: Any, **_: Any) -> None:
        if s.sidecar_mode == "auto":
            major, minor = rt.cluster.version()
            rt.native = rt.cluster.native_sidecars()
            logger.info(f"API server {major}.{minor}: native sidecars {rt.native}")
        else:
            rt.native = s.sidecar_mode == "native"

    @kopf.on.cleanup(registry=registry)
    def close(**_: Any) -> None:
        rt.close()

    def bind(fn: Callable[..., Any], *names: str) -> Callable[..., Any]:
        def handler(**kwargs: Any) -> Any:
            return fn(rt, **{k: kwargs[k] for k in names})
        handler.__name__ = fn.__name__
        return handler

    on_reconcile = bind(reconcile, "spec", "meta", "status", "name", "namespace", "patch",
                        "retry", "logger")
    kopf.on.resume(GROUP, VERSION, PUBLISHERS, id="reconcile", registry=registry)(on_reconcile)
    kopf.on.create(GROUP, VERSION, PUBLISHERS, id="reconcile", registry=registry)(on_reconcile)
    kopf.on.update(GROUP, VERSION, PUBLISHERS, id="reconcile", field="spec",
                   registry=registry)(on_reconcile)
    kopf.on.delete(GROUP, VERSION, PUBLISHERS, id="finalize", registry=registry)(
        bind(finalize, "spec", "status", "name", "namespace", "retry", "logger"))
    kopf.timer(GROUP, VERSION, PUBLISHERS, id="observe", interval=s.status_interval,
               registry=registry)(
        bind(observe, "body", "spec", "meta", "status", "name", "namespace", "stopped",
             "logger"))
    kopf.timer(GROUP, VERSION, SEEDS, id="seed", interval=s.seed_interval, registry=registry,
               when=lambda status, **_: status.get("phase") not in TERMINAL)(
        bind(sync_seed, "spec", "meta", "status", "name", "namespace", "patch", "logger"))
    kopf.on.mutate("", "v1", "pods", id=HANDLER_ID, operations=["CREATE"], side_effects=False,
                   ignore_failures=True, registry=registry)(
        bind(inject, "body", "patch", "warnings", "logger"))

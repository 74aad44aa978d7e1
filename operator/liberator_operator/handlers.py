"""The kopf handlers. They gather state and write status; pure builders make the objects.

- EntityPublisher: reconcile on create, update and resume (references, Pub/Sub, conditions);
  a finalizer honouring ``deletionPolicy``; a timer that reads pods and the data plane.
- EventSeed: one timer that ensures the Job and copies its phase and the seed's counts. It is
  the only writer of the seed's status, so nothing races it.
- Pod: the mutating admission webhook that injects the sidecar.

:func:`register` adds them to a registry with the settings bound, so intervals come from
:class:`~liberator_operator.settings.OperatorSettings` rather than from import-time globals. A
resource handler gets its object as one :class:`~liberator_operator.runtime.Subject`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jsonpatch
import kopf

from liberator_operator import conditions as cond
from liberator_operator.model import (
    GROUP,
    PUBLISHERS,
    SEEDS,
    VERSION,
    Publisher,
)
from liberator_operator.observe import observe
from liberator_operator.patch import (
    build_patch,
    skip_reason,
)
from liberator_operator.provisioning import Plan, ProvisioningError, PubSubAdmin, build_plan
from liberator_operator.runtime import (
    Conditions,
    Runtime,
    Subject,
    backoff,
    publisher_of,
    redis_url_of,
)
from liberator_operator.seeding import TERMINAL, sync_seed
from liberator_operator.webhook import HANDLER_ID
from liberator_publisher.core.contract import control_key

__all__ = ["Runtime", "register"]


# -- EntityPublisher -------------------------------------------------------------------------------


def _reference_problem(rt: Runtime, publisher: Publisher) -> tuple[str, str] | None:
    """A missing Secret (or key) that the sidecar needs, as (reason, message)."""
    namespace, spec = publisher["namespace"], publisher["spec"]
    refs = [
        (
            "Mongo",
            "spec.mongo.uriSecretRef",
            spec["mongo"]["uriSecretRef"],
            "uri",
            "the MongoDB connection string",
        )
    ]
    redis_ref = spec["redis"].get("secretRef")
    if redis_ref is not None:
        refs.append(("Redis", "spec.redis.secretRef", redis_ref, "url", "the Redis URL"))
    for what, path, ref, default_key, holds in refs:
        key = ref.get("key") or default_key
        keys = rt.cluster.secret_keys(namespace, ref["name"])
        if keys is None:
            return (
                f"{what}SecretMissing",
                f"Secret {namespace}/{ref['name']} ({path}) not found: create it with key "
                f"{key!r} holding {holds}; the operator retries",
            )
        if key not in keys:
            return (
                f"{what}SecretKeyMissing",
                f"Secret {namespace}/{ref['name']} has no key {key!r} ({path}.key); it has "
                f"{', '.join(keys) or 'no keys'}: add the key or fix {path}.key",
            )
    return None


def reconcile(rt: Runtime, obj: Subject, *, patch: kopf.Patch, retry: int, logger: Any) -> None:
    """Check the references, then ensure the topics and subscriptions; every outcome is a
    condition, and a failure retries (backing off while Pub/Sub is away)."""
    publisher, conds = obj.publisher(), obj.conditions()
    if obj.spec.get("paused"):
        _set_paused(conds)
        _flush(patch, conds)
        return
    problem = _reference_problem(rt, publisher)
    if problem is not None:
        conds.set(cond.READY, False, *problem)
        _flush(patch, conds)
        raise kopf.TemporaryError(problem[1], delay=rt.settings.retry_delay)
    plan = build_plan(publisher)
    created = _Created.of(obj.status)
    failure = _provision(rt.admin(), plan, created, conds)
    if failure is not None:
        condition, reason, exc = failure
        conds.set(condition, False, reason, str(exc))
        conds.set(cond.READY, False, reason, f"{condition} is False: {exc}")
        patch.status["provisioned"] = created.status()
        _flush(patch, conds)
        delay = backoff(retry, rt.settings) if exc.transient else rt.settings.retry_delay
        logger.warning(f"{exc}; retrying in {delay:.0f}s")
        raise kopf.TemporaryError(str(exc), delay=delay) from exc
    _set_provisioned(conds)
    patch.status["topic"] = plan.topic
    patch.status["seedTopic"] = plan.seed_topic
    patch.status["subscriptions"] = [s.name for s in plan.subscriptions]
    patch.status["provisioned"] = created.status()
    _flush(patch, conds)
    logger.info(
        f"provisioned {len(plan.topics)} topic(s), {len(plan.subscriptions)} "
        f"subscription(s); created {len(created.topics)} and {len(created.subscriptions)} so far"
    )


def _flush(patch: kopf.Patch, conds: Conditions) -> None:
    patch.status["conditions"] = conds.items
    patch.status["observedGeneration"] = conds.generation


def _set_paused(conds: Conditions) -> None:
    conds.set(
        cond.INJECTING,
        False,
        "Paused",
        "spec.paused is true: new pods get no sidecar; running sidecars publish "
        "nothing (capture goes on) until it is false",
    )
    conds.set(cond.READY, False, "Paused", "spec.paused is true: provisioning is stopped")


@dataclass
class _Created:
    """``status.provisioned``: what this operator created, all a Delete policy removes."""

    topics: list[str]
    subscriptions: list[str]

    @classmethod
    def of(cls, status: Mapping[str, Any]) -> _Created:
        provisioned = status.get("provisioned") or {}
        return cls(
            list(provisioned.get("topics") or []), list(provisioned.get("subscriptions") or [])
        )

    def status(self) -> dict[str, list[str]]:
        return {"topics": self.topics, "subscriptions": self.subscriptions}


def _provision(
    admin: PubSubAdmin, plan: Plan, created: _Created, conds: Conditions
) -> tuple[str, str, ProvisioningError] | None:
    """Ensure the topics, then the subscriptions, adding to ``created`` what this call made and
    setting each step's condition once it holds; the step that failed as (condition, reason,
    error), whose condition the caller sets."""
    try:
        for topic in plan.topics:
            if admin.ensure_topic(topic) and topic not in created.topics:
                created.topics.append(topic)
    except ProvisioningError as exc:
        return cond.TOPIC_READY, "PubSubUnavailable" if exc.transient else "TopicError", exc
    conds.set(cond.TOPIC_READY, True, "TopicsExist", f"{', '.join(plan.topics)} exist")
    try:
        for sub in plan.subscriptions:
            if admin.ensure_subscription(sub) and sub.name not in created.subscriptions:
                created.subscriptions.append(sub.name)
    except ProvisioningError as exc:
        reason = "PubSubUnavailable" if exc.transient else "SubscriptionError"
        return cond.SUBSCRIPTIONS_READY, reason, exc
    if plan.subscriptions:
        conds.set(
            cond.SUBSCRIPTIONS_READY,
            True,
            "SubscriptionsExist",
            f"{len(plan.subscriptions)} subscription(s) exist",
        )
    else:
        conds.set(cond.SUBSCRIPTIONS_READY, True, "NoneDeclared", "no subscriptions declared")
    return None


def _set_provisioned(conds: Conditions) -> None:
    conds.set(
        cond.INJECTING,
        True,
        "Enabled",
        "new pods matching spec.selector get the sidecar; a rollout applies spec changes "
        "to existing pods",
    )
    conds.set(
        cond.READY, True, "Provisioned", "references resolved; topics and subscriptions exist"
    )


def finalize(rt: Runtime, obj: Subject, *, retry: int, logger: Any) -> None:
    _forget_control(rt, obj.publisher(), logger)
    if obj.spec.get("deletionPolicy", "Retain") != "Delete":
        logger.info("deletionPolicy is Retain: topics and subscriptions are kept")
        return
    in_use = _used_by_others(rt, obj)
    provisioned = obj.status.get("provisioned") or {}
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
        raise kopf.TemporaryError(str(exc), delay=backoff(retry, rt.settings)) from exc
    logger.info("deletionPolicy is Delete: removed the topics and subscriptions it created")


def _used_by_others(rt: Runtime, obj: Subject) -> set[str]:
    """Topics and subscriptions the other EntityPublishers (not being deleted) declare.

    Topics are often shared (integration-events): never delete one another publisher uses.
    """
    in_use: set[str] = set()
    for item in rt.cluster.list_custom(GROUP, VERSION, PUBLISHERS):
        item_meta = item.get("metadata") or {}
        if (item_meta.get("namespace"), item_meta.get("name")) == (obj.namespace, obj.name):
            continue
        if item_meta.get("deletionTimestamp"):
            continue
        other = build_plan(
            publisher_of(
                item_meta.get("namespace", ""), item_meta.get("name", ""), item.get("spec") or {}
            )
        )
        in_use.update(other.topics)
        in_use.update(s.name for s in other.subscriptions)
    return in_use


def _forget_control(rt: Runtime, publisher: Publisher, logger: Any) -> None:
    """Delete the control record (it has no expiry, so a paused record would outlive us)."""
    try:
        url, _ = redis_url_of(rt, publisher)
        if url is not None:
            rt.redis(url).delete(control_key(f"{publisher['namespace']}/{publisher['name']}"))
    except Exception as exc:  # Redis away, Secret gone: deletion must not hang on it
        logger.warning(f"could not delete the control record: {exc}")


# -- Pod injection ---------------------------------------------------------------------------------


def inject(
    rt: Runtime, *, body: Mapping[str, Any], patch: kopf.Patch, warnings: list[str], logger: Any
) -> None:
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
    publishers = [
        publisher_of(namespace, (i.get("metadata") or {}).get("name", ""), i.get("spec") or {})
        for i in items
        if not (i.get("metadata") or {}).get("deletionTimestamp")
    ]
    injection = build_patch(pod, namespace, publishers, rt.settings, native=rt.native)
    if not injection.ops:
        return
    ops = injection.ops
    patch.fns.append(lambda raw: jsonpatch.apply_patch(raw, ops, in_place=True))
    logger.info(f"injecting {', '.join(injection.publishers)} into a pod in {namespace}")


# -- registration ----------------------------------------------------------------------------


def register(registry: kopf.OperatorRegistry, rt: Runtime) -> None:
    """Add every handler to ``registry``, bound to ``rt``."""
    _register_lifecycle(registry, rt)
    _register_publishers(registry, rt)
    _register_seeds(registry, rt)
    _register_injection(registry, rt)


def _bind(
    rt: Runtime, fn: Callable[..., Any], *names: str, subject: bool = True
) -> Callable[..., Any]:
    """``fn`` as kopf calls it: with ``rt``, the object as a :class:`Subject` (unless
    ``subject`` is False) and kopf's keyword arguments ``names``."""

    def handler(**kwargs: Any) -> Any:
        head = (rt, Subject.of(kwargs)) if subject else (rt,)
        return fn(*head, **{k: kwargs[k] for k in names})

    handler.__name__ = fn.__name__
    return handler


def _register_lifecycle(registry: kopf.OperatorRegistry, rt: Runtime) -> None:
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


def _register_publishers(registry: kopf.OperatorRegistry, rt: Runtime) -> None:
    on_reconcile = _bind(rt, reconcile, "patch", "retry", "logger")
    kopf.on.resume(GROUP, VERSION, PUBLISHERS, id="reconcile", registry=registry)(on_reconcile)
    kopf.on.create(GROUP, VERSION, PUBLISHERS, id="reconcile", registry=registry)(on_reconcile)
    kopf.on.update(GROUP, VERSION, PUBLISHERS, id="reconcile", field="spec", registry=registry)(
        on_reconcile
    )
    kopf.on.delete(GROUP, VERSION, PUBLISHERS, id="finalize", registry=registry)(
        _bind(rt, finalize, "retry", "logger")
    )
    kopf.timer(
        GROUP,
        VERSION,
        PUBLISHERS,
        id="observe",
        interval=rt.settings.status_interval,
        registry=registry,
    )(_bind(rt, observe, "body", "stopped", "logger"))


def _register_seeds(registry: kopf.OperatorRegistry, rt: Runtime) -> None:
    kopf.timer(
        GROUP,
        VERSION,
        SEEDS,
        id="seed",
        interval=rt.settings.seed_interval,
        registry=registry,
        when=lambda status, **_: status.get("phase") not in TERMINAL,
    )(_bind(rt, sync_seed, "patch", "logger"))


def _register_injection(registry: kopf.OperatorRegistry, rt: Runtime) -> None:
    kopf.on.mutate(
        "",
        "v1",
        "pods",
        id=HANDLER_ID,
        operations=["CREATE"],
        side_effects=False,
        ignore_failures=True,
        registry=registry,
    )(_bind(rt, inject, "body", "patch", "warnings", "logger", subject=False))

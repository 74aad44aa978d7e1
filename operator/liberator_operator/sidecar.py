"""The injected ``liberator publish`` container, built from the sidecar contract.

Pure functions: the webhook calls :func:`build_sidecar`, the seed Job reuses
:func:`build_contract_env`. Variable names come only from
:data:`liberator_publisher.core.contract.CONTRACT`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from liberator_operator.model import Publisher, SecretKeyRef
from liberator_operator.settings import OperatorSettings
from liberator_publisher.core.contract import (
    CONTRACT,
    LEASE_TTL_SECONDS,
    RESUME_MARGIN_PERCENT,
    STALL_AFTER_SECONDS,
    default_outbox,
)

__all__ = [
    "CONTAINER_PREFIX",
    "DEFAULT_RESOURCES",
    "build_contract_env",
    "build_sidecar",
    "container_name",
    "default_outbox",
    "seed_topic",
    "sidecar_running",
]

CONTAINER_PREFIX = "liberator-"
DEFAULT_RESOURCES: dict[str, dict[str, Any]] = {
    "requests": {"cpu": "20m", "memory": "96Mi"},
    # docs/targets.md: at most 80 MiB idle plus 30 MiB under load; the limit leaves room above.
    "limits": {"memory": "192Mi"},
}
_CONTRACT_NAMES = frozenset(var.name for var in CONTRACT)
_NOT_LABEL = re.compile(r"[^a-z0-9-]")


def container_name(publisher_name: str) -> str:
    """``liberator-<publisher>``, made a valid container name (a DNS label of at most 63)."""
    base = _NOT_LABEL.sub("-", f"{CONTAINER_PREFIX}{publisher_name}".lower()).strip("-")
    if len(base) <= 63:
        return base
    digest = hashlib.sha256(publisher_name.encode()).hexdigest()[:8]
    return f"{base[:54].rstrip('-')}-{digest}"


def sidecar_running(pod: Mapping[str, Any], publisher_name: str) -> bool:
    """Whether the pod's ``liberator-<publisher>`` container is running now.

    What ``status.pods`` counts: a Pending pod, or one whose sidecar waits or has terminated,
    publishes nothing. A native sidecar reports in ``initContainerStatuses``, a regular one in
    ``containerStatuses``; both are read, so the injection mode does not matter.
    """
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    status: Mapping[str, Any] = pod.get("status") or {}
    name = container_name(publisher_name)
    for item in (status.get("initContainerStatuses") or []) + (
        status.get("containerStatuses") or []
    ):
        if item.get("name") == name:
            return bool((item.get("state") or {}).get("running") is not None)
    return False


def seed_topic(publisher: Publisher) -> str:
    """The seed topic id: ``spec.pubsub.seedTopic``, default ``<topic>.seed``."""
    pubsub = publisher["spec"]["pubsub"]
    return pubsub.get("seedTopic") or f"{pubsub['topic']}.seed"


def _secret(ref: SecretKeyRef, default_key: str) -> dict[str, Any]:
    return {
        "valueFrom": {"secretKeyRef": {"name": ref["name"], "key": ref.get("key") or default_key}}
    }


def build_contract_env(
    publisher: Publisher, settings: OperatorSettings
) -> dict[str, dict[str, Any]]:
    """The contract variables for one publisher, as ``{name: EnvVar-body-without-name}``.

    The Mongo URI (and a Redis URL from a Secret) go by ``secretKeyRef`` so no secret is copied
    into the pod spec. Optional variables are set only when the spec gives them, so the sidecar's
    documented defaults apply otherwise.
    """
    spec = publisher["spec"]
    mongo, entity, pubsub, redis = spec["mongo"], spec["entity"], spec["pubsub"], spec["redis"]
    sidecar = spec.get("sidecar", {})
    env: dict[str, dict[str, Any]] = {
        "LIBERATOR_MONGO_URI": _secret(mongo["uriSecretRef"], "uri"),
        "LIBERATOR_DATABASE": {"value": mongo["database"]},
        "LIBERATOR_COLLECTION": {"value": mongo["collection"]},
        "LIBERATOR_ENTITY_TYPE": {"value": entity["type"]},
        "LIBERATOR_PUBSUB_PROJECT": {"value": pubsub["project"]},
        "LIBERATOR_TOPIC": {"value": pubsub["topic"]},
        "LIBERATOR_REDIS_URL": (
            {"value": redis["url"]} if "url" in redis else _secret(redis["secretRef"], "url")
        ),
        "LIBERATOR_OUTBOX_COLLECTION": {
            "value": mongo.get("outboxCollection") or default_outbox(mongo["collection"])
        },
        "LIBERATOR_ID_FIELD": {"value": entity.get("idField", "_id")},
        "LIBERATOR_EVENT_CONTEXT_FIELD": {"value": entity.get("eventContextField", "_event")},
        "LIBERATOR_LEASE_TTL_SECONDS": {
            "value": f"{sidecar.get('leaseTtlSeconds', LEASE_TTL_SECONDS):g}"
        },
        "LIBERATOR_PUBLISHER": {"value": f"{publisher['namespace']}/{publisher['name']}"},
        "LIBERATOR_STALL_AFTER_SECONDS": {
            "value": str(spec.get("stallAfterSeconds", STALL_AFTER_SECONDS))
        },
        "LIBERATOR_RESUME_MARGIN_PERCENT": {
            "value": str(spec.get("resumePointMarginPercent", RESUME_MARGIN_PERCENT))
        },
        "LIBERATOR_LOG_LEVEL": {"value": sidecar.get("logLevel", "INFO")},
        # One JSON object a line: what log collectors in a cluster parse.
        "LIBERATOR_LOG_FORMAT": {"value": "json"},
        "LIBERATOR_POD_NAME": {"valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    }
    if settings.pubsub_emulator_host:
        env["PUBSUB_EMULATOR_HOST"] = {"value": settings.pubsub_emulator_host}
    if entity.get("source"):
        env["LIBERATOR_SOURCE"] = {"value": entity["source"]}
    if entity.get("versionField"):
        env["LIBERATOR_VERSION_FIELD"] = {"value": entity["versionField"]}
    if entity.get("excludeFields"):
        env["LIBERATOR_EXCLUDE_FIELDS"] = {"value": ",".join(entity["excludeFields"])}
    unknown = set(env) - _CONTRACT_NAMES
    if unknown:  # a programming error: the contract module is the one source of names
        raise AssertionError(f"not in the sidecar contract: {sorted(unknown)}")
    return env


def build_sidecar(
    publisher: Publisher, settings: OperatorSettings, *, port: int, native: bool
) -> dict[str, Any]:
    """The sidecar container for ``publisher`` listening on ``port``.

    ``native`` makes it a native sidecar: an init container with ``restartPolicy: Always``
    (Kubernetes 1.29+), which starts before and stops after the app containers.
    """
    spec = publisher["spec"]
    sidecar = spec.get("sidecar", {})
    env = build_contract_env(publisher, settings)
    env["LIBERATOR_HTTP_PORT"] = {"value": str(port)}
    # Contract order keeps the spec stable and easy to read in `kubectl get pod -o yaml`.
    env_list = [{"name": var.name, **env[var.name]} for var in CONTRACT if var.name in env]
    container: dict[str, Any] = {
        "name": container_name(publisher["name"]),
        "image": sidecar.get("image") or settings.image,
        "imagePullPolicy": sidecar.get("imagePullPolicy", "IfNotPresent"),
        "command": ["liberator", "publish"],
        "env": env_list,
        # Port names are unique in a pod and at most 15 characters.
        "ports": [{"name": f"lbr-{port}", "containerPort": port, "protocol": "TCP"}],
        "resources": sidecar.get("resources") or DEFAULT_RESOURCES,
        # /readyz is true once configured, standbys included: the sidecar never makes its
        # application pod unready (docs/targets.md).
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": port},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": port},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if native:
        container["restartPolicy"] = "Always"
    return container

"""The ``batch/v1`` Job that runs ``liberator seed`` for an EventSeed, and its phase.

Pure functions. The Job name is deterministic, so re-applying an EventSeed (or an operator
restart) finds the existing Job instead of creating a second one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Literal

from liberator_operator.model import GROUP, VERSION, EventSeedSpec, Publisher
from liberator_operator.settings import OperatorSettings
from liberator_operator.sidecar import build_contract_env, seed_topic

__all__ = [
    "SEED_ENV",
    "SEED_LABEL",
    "Phase",
    "build_seed_job",
    "job_name",
    "job_phase",
    "seed_args",
    "seed_id",
]

Phase = Literal["Pending", "Running", "Succeeded", "Failed"]
SEED_ENV = "LIBERATOR_SEED"
SEED_LABEL = "liberator.io/seed"
_PREFIX = "liberator-seed-"
# Contract variables the seed command does not read (it publishes to --topic, serves no HTTP and
# holds no lease).
_NOT_FOR_SEED = frozenset(
    {
        "LIBERATOR_TOPIC",
        "LIBERATOR_HTTP_PORT",
        "LIBERATOR_LEASE_TTL_SECONDS",
        "LIBERATOR_STALL_AFTER_SECONDS",
        "LIBERATOR_RESUME_MARGIN_PERCENT",
    }
)


def job_name(seed_name: str) -> str:
    """``liberator-seed-<seed>``; trimmed with a short hash when over 63 characters."""
    name = f"{_PREFIX}{seed_name}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(seed_name.encode()).hexdigest()[:8]
    return f"{name[:54].rstrip('-.')}-{digest}"


def seed_id(namespace: str, name: str) -> str:
    """Keys the seed's ledger, checkpoint and Redis progress hash: ``<namespace>/<name>``."""
    return f"{namespace}/{name}"


def seed_args(namespace: str, name: str, spec: EventSeedSpec, publisher: Publisher) -> list[str]:
    """The ``liberator seed`` command line (the SEED INTERFACE)."""
    args = [
        "liberator",
        "seed",
        "--topic",
        spec.get("topic") or seed_topic(publisher),
        "--mode",
        spec.get("mode", "latest"),
        "--batch-size",
        str(spec.get("batchSize", 500)),
        "--rate-limit",
        str(spec.get("rateLimit", 0)),
        "--seed-id",
        seed_id(namespace, name),
    ]
    if spec.get("filter"):
        args += ["--filter", json.dumps(spec["filter"], sort_keys=True, separators=(",", ":"))]
    if spec.get("allowEmpty"):
        args.append("--allow-empty")
    return args


def build_seed_job(
    namespace: str,
    name: str,
    *,
    uid: str,
    spec: EventSeedSpec,
    publisher: Publisher,
    settings: OperatorSettings,
) -> dict[str, Any]:
    """The Job for EventSeed ``namespace/name`` (``uid`` makes the seed its controller owner)."""
    pod_spec: dict[str, Any] = {}
    if spec.get("serviceAccountName"):
        # The identity that publishes (Workload Identity); default: the namespace's "default".
        pod_spec["serviceAccountName"] = spec["serviceAccountName"]
    labels = {
        "app.kubernetes.io/name": "liberator-seed",
        "app.kubernetes.io/managed-by": "liberator-operator",
        SEED_LABEL: name[:63],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(name),
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [_owner_reference(name, uid)],
        },
        "spec": {
            "backoffLimit": spec.get("backoffLimit", 3),
            "template": {
                "metadata": {
                    "labels": labels,
                    # The seed pod may match the publisher's selector: it must not get a sidecar.
                    "annotations": {"liberator.io/inject": "false"},
                },
                "spec": {
                    **pod_spec,
                    "restartPolicy": "Never",
                    "securityContext": {
                        "runAsNonRoot": True,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [_seed_container(namespace, name, spec, publisher, settings)],
                },
            },
        },
    }


def _owner_reference(name: str, uid: str) -> dict[str, Any]:
    """The EventSeed as the Job's controller: deleting the seed deletes the Job."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EventSeed",
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _seed_container(
    namespace: str,
    name: str,
    spec: EventSeedSpec,
    publisher: Publisher,
    settings: OperatorSettings,
) -> dict[str, Any]:
    """The ``seed`` container: the sidecar's image and contract, less what seeding does not read."""
    env = build_contract_env(publisher, settings)
    env_list = [{"name": k, **v} for k, v in env.items() if k not in _NOT_FOR_SEED]
    env_list.append({"name": SEED_ENV, "value": seed_id(namespace, name)})
    sidecar = publisher["spec"].get("sidecar", {})
    return {
        "name": "seed",
        "image": sidecar.get("image") or settings.image,
        "imagePullPolicy": sidecar.get("imagePullPolicy", "IfNotPresent"),
        "command": seed_args(namespace, name, spec, publisher),
        "env": env_list,
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "512Mi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def job_phase(job: Mapping[str, Any] | None) -> Phase:
    """The seed phase that a Job's status means (no Job yet: Pending)."""
    status: Mapping[str, Any] = (job or {}).get("status") or {}
    true = {c.get("type") for c in status.get("conditions") or [] if c.get("status") == "True"}
    if "Complete" in true or "SuccessCriteriaMet" in true:
        return "Succeeded"
    if "Failed" in true or "FailureTarget" in true:
        return "Failed"
    if (status.get("active") or 0) > 0 or (status.get("ready") or 0) > 0:
        return "Running"
    return "Pending"

"""Small workloads of ours on the node, and reading their pods.

An app Deployment runs a Python program in the project image (its venv has pymongo), as the
cluster tier and ``make demo`` do; the helpers read what the kubelet reports back. Used by
``tests/test_cluster`` and ``make demo`` (``hack/liberator_demo``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from liberator_stack import images

# What Pod Security "restricted" asks of a container.
RESTRICTED: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
APP_PORT = 8080


def app_deployment(
    name: str,
    namespace: str,
    *,
    labels: dict[str, str],
    replicas: int,
    command: Sequence[str],
    env: Sequence[dict[str, Any]] = (),
    volumes: Sequence[dict[str, Any]] = (),
    mounts: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """A Deployment of one ``app`` container in the project image, Ready once it serves HTTP
    on :data:`APP_PORT`; ``POD_NAME`` is always in its environment."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {
                            "name": "app",
                            "image": images.project_image(),
                            # Never pulled: the image is loaded into the node (make image).
                            "imagePullPolicy": "IfNotPresent",
                            "command": list(command),
                            "env": [
                                {
                                    "name": "POD_NAME",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                },
                                *env,
                            ],
                            "ports": [{"containerPort": APP_PORT}],
                            "readinessProbe": {
                                "httpGet": {"path": "/", "port": APP_PORT},
                                "periodSeconds": 2,
                            },
                            "securityContext": RESTRICTED,
                            "volumeMounts": list(mounts),
                        }
                    ],
                    "volumes": list(volumes),
                },
            },
        },
    }


def sidecars(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """The injected Liberator containers of a pod (native sidecars or regular ones)."""
    spec = pod["spec"]
    return [
        c
        for c in [*spec.get("initContainers", []), *spec["containers"]]
        if c["name"].startswith("liberator")
    ]


def container_ready(pod: dict[str, Any], container: str) -> bool:
    statuses = [
        *pod.get("status", {}).get("initContainerStatuses", []),
        *pod.get("status", {}).get("containerStatuses", []),
    ]
    return any(s["name"] == container and s.get("ready") for s in statuses)


def pod_ready(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in pod.get("status", {}).get("conditions", [])
    )


def live(pods: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pods not being deleted."""
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]

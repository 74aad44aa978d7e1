"""Sample EntityPublishers and pods for the operator's tests, defaulted as the API server does."""

from __future__ import annotations

import copy
from typing import Any

from liberator_operator.model import EntityPublisherSpec, Publisher


def publisher_spec(**overrides: Any) -> EntityPublisherSpec:
    spec: dict[str, Any] = {
        "selector": {"matchLabels": {"app": "quotes"}},
        "allowMatchAll": False,
        "mongo": {
            "uriSecretRef": {"name": "quotes-mongo", "key": "uri"},
            "database": "sales",
            "collection": "quotes",
        },
        "entity": {"type": "quote", "idField": "_id", "eventContextField": "_event"},
        "pubsub": {"project": "liberator-local", "topic": "integration-events"},
        "redis": {"url": "redis://redis:6379/0"},
        "sidecar": {"imagePullPolicy": "IfNotPresent", "logLevel": "INFO", "leaseTtlSeconds": 10},
        "deletionPolicy": "Retain",
        "paused": False,
    }
    for key, value in overrides.items():
        spec[key] = value
    return copy.deepcopy(spec)  # type: ignore[return-value]


def publisher(name: str = "quotes", namespace: str = "shop", **overrides: Any) -> Publisher:
    return {"namespace": namespace, "name": name, "spec": publisher_spec(**overrides)}


def pod(
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    namespace: str = "shop",
    **spec: Any,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "app-1", "namespace": namespace}
    if labels is not None:
        meta["labels"] = labels
    if annotations is not None:
        meta["annotations"] = annotations
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": [{"name": "app", "image": "busybox"}], **spec},
    }
    return body

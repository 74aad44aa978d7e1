"""What the handlers share: the runtime (settings, API and lazily made clients) and the small
helpers every handler uses."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from liberator_operator import conditions as cond
from liberator_operator.cluster import Cluster
from liberator_operator.datastatus import (
    connect,
)
from liberator_operator.model import (
    Condition,
    EntityPublisherSpec,
    Publisher,
)
from liberator_operator.provisioning import PubSubAdmin
from liberator_operator.settings import OperatorSettings

__all__ = ["Conditions", "Runtime", "Subject", "backoff", "publisher_of", "redis_url_of"]


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


def publisher_of(namespace: str, name: str, spec: Mapping[str, Any]) -> Publisher:
    return {"namespace": namespace, "name": name, "spec": cast(EntityPublisherSpec, dict(spec))}


def backoff(retry: int, settings: OperatorSettings) -> float:
    return float(min(settings.backoff_max, 2 ** min(retry, 16)))


class Conditions:
    """Collects condition changes of one handler run."""

    def __init__(self, current: Any, generation: int | None) -> None:
        self.items: list[Condition] = list(current or [])
        self.generation = generation
        self.now = cond.now_rfc3339()

    def set(self, type_: str, status: bool | cond.Status, reason: str, message: str) -> None:
        self.items = cond.set_condition(
            self.items, type_, status, reason, message, now=self.now, generation=self.generation
        )


@dataclass(frozen=True)
class Subject:
    """The object one handler call is about, as kopf's keyword arguments give it."""

    namespace: str
    name: str
    spec: Mapping[str, Any]
    meta: Mapping[str, Any]
    status: Mapping[str, Any]

    @classmethod
    def of(cls, kwargs: Mapping[str, Any]) -> Subject:
        return cls(
            namespace=kwargs["namespace"],
            name=kwargs["name"],
            spec=kwargs["spec"],
            meta=kwargs["meta"],
            status=kwargs["status"],
        )

    def publisher(self) -> Publisher:
        """The object as an EntityPublisher."""
        return publisher_of(self.namespace, self.name, self.spec)

    def conditions(self) -> Conditions:
        """Its conditions as they stand, for this run to change."""
        return Conditions(self.status.get("conditions"), self.meta.get("generation"))


def redis_url_of(rt: Runtime, publisher: Publisher) -> tuple[str | None, str]:
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

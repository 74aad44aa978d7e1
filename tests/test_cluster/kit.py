"""Objects and waits the cluster tier shares: a namespace with an EntityPublisher and a small app
Deployment of ours (our image, writing with pymongo), and a Pub/Sub reader."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pymongo
import yaml
from google.cloud import pubsub_v1

from liberator_stack import Stack, apps, deploy
from tests.support import waiting

T = TypeVar("T")


@dataclass
class Node:
    """The cluster and the host servers its pods use."""

    stack: Stack
    kubeconfig: str

    @property
    def exports(self) -> dict[str, str]:
        return self.stack.exports()

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 300) -> str:
        return deploy.kubectl(self.kubeconfig, *args, stdin=stdin, timeout=timeout)


WAIT = 240.0  # generous: a noisy 2-core machine

# The app: insert one quote named after its pod, then serve HTTP for its readiness probe. A
# failed insert (MongoDB down) does not stop it: the app's readiness is its own.
APP = """
import http.server, os, pymongo
try:
    client = pymongo.MongoClient(os.environ["MONGO_URI"], serverSelectionTimeoutMS=5000)
    client.quotes.quotes.insert_one({"_id": os.environ["POD_NAME"], "by": "app", "version": 1})
    print("inserted", os.environ["POD_NAME"], flush=True)
except Exception as error:
    print("insert failed:", error, flush=True)
http.server.HTTPServer(("", 8080), http.server.SimpleHTTPRequestHandler).serve_forever()
"""


def eventually(check: Callable[[], T | None], *, what: str, wait: float = WAIT) -> T:
    """Poll ``check`` once a second: pods and Jobs move slowly, and any error while they do
    (a container not started yet) counts as not yet."""
    value: T = waiting.eventually(check, what=what, deadline=wait, every=1.0, retry_on=(Exception,))
    return value


class Quotes:
    """A namespace with Secrets, an EntityPublisher ``quotes`` and a Deployment ``quotes``."""

    def __init__(self, node: Node, *, restricted: bool = False, replicas: int = 1) -> None:
        self.node = node
        self.unique = uuid.uuid4().hex[:8]
        self.ns = f"quotes-{self.unique}"
        self.topic = f"events-{self.unique}"
        self.subscription = f"check-{self.unique}"
        self.seed_topic = f"seed-{self.unique}"
        self.seed_subscription = f"check-seed-{self.unique}"
        self.project = node.exports["LIBERATOR_PUBSUB_PROJECT"]
        self.restricted = restricted
        self.replicas = replicas
        self.database = f"quotes_{self.unique}"

    # -- objects --

    def apply(self, *docs: dict[str, Any]) -> None:
        self.node.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))

    def create(self) -> Quotes:
        labels = {"pod-security.kubernetes.io/enforce": "restricted"} if self.restricted else {}
        exports = self.node.exports
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": self.ns, "labels": labels},
            },
            self.secret("mongo", uri=self.mongo_uri),
            self.secret("redis", url=exports["LIBERATOR_REDIS_URL"]),
            self.publisher(),
        )
        eventually(
            lambda: self.condition("SubscriptionsReady") == "True",
            what=f"EntityPublisher {self.ns}/quotes SubscriptionsReady",
        )
        self.apply(self.deployment())
        self.rollout()
        return self

    def secret(self, name: str, **data: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": self.ns},
            "stringData": data,
        }

    @property
    def mongo_uri(self) -> str:
        return self.node.exports["LIBERATOR_MONGO_URI"]

    def publisher(self) -> dict[str, Any]:
        return {
            "apiVersion": "liberator.io/v1alpha1",
            "kind": "EntityPublisher",
            "metadata": {"name": "quotes", "namespace": self.ns},
            "spec": {
                "selector": {"matchLabels": {"app": "quotes-service"}},
                "mongo": {
                    "uriSecretRef": {"name": "mongo"},
                    "database": self.database,
                    "collection": "quotes",
                },
                "entity": {"type": "quote"},
                "pubsub": {
                    "project": self.project,
                    "topic": self.topic,
                    "seedTopic": self.seed_topic,
                    "subscriptions": [
                        {"name": self.subscription},
                        {"name": self.seed_subscription, "source": "seed"},
                    ],
                },
                "redis": {"secretRef": {"name": "redis"}},
                "deletionPolicy": "Delete",
            },
        }

    def deployment(self) -> dict[str, Any]:
        app = APP.replace("client.quotes.quotes", f"client.{self.database}.quotes")
        return apps.app_deployment(
            "quotes",
            self.ns,
            labels={"app": "quotes-service"},
            replicas=self.replicas,
            command=["python3", "-c", app],
            env=[
                {
                    "name": "MONGO_URI",
                    "valueFrom": {"secretKeyRef": {"name": "mongo", "key": "uri"}},
                }
            ],
        )

    def rollout(self) -> None:
        deploy.rollout_status(self.node.kubeconfig, "quotes", WAIT, namespace=self.ns)

    def seed(self, name: str, **spec: Any) -> None:
        """Apply the EventSeed ``name`` of the publisher ``quotes``."""
        self.apply(
            {
                "apiVersion": "liberator.io/v1alpha1",
                "kind": "EventSeed",
                "metadata": {"name": name, "namespace": self.ns},
                "spec": {"publisher": "quotes", **spec},
            }
        )

    def seed_end(self, name: str) -> dict[str, Any]:
        """The EventSeed ``name`` once it ended (Succeeded or Failed)."""

        def ended() -> dict[str, Any] | None:
            seed: dict[str, Any] = self.get("eventseed", name)
            return seed if seed.get("status", {}).get("phase") in ("Succeeded", "Failed") else None

        return eventually(ended, what="the seed's end")

    # -- reading --

    def get(self, *what: str) -> Any:
        return json.loads(self.node.kubectl("-n", self.ns, "get", *what, "-o", "json"))

    def status(self) -> dict[str, Any]:
        return dict(self.get("entitypublisher", "quotes").get("status") or {})

    def condition(self, kind: str) -> str | None:
        for cond in self.status().get("conditions") or []:
            if cond["type"] == kind:
                return str(cond["status"])
        return None

    def pods(self) -> list[dict[str, Any]]:
        return apps.live(self.get("pods", "-l", "app=quotes-service")["items"])

    def insert(self, *ids: str) -> None:
        with pymongo.MongoClient(self.mongo_uri) as client:
            client[self.database].quotes.insert_many([{"_id": i, "version": 1} for i in ids])


# Shared with make demo (one home: hack/liberator_stack/apps.py).
sidecars = apps.sidecars
ready = apps.container_ready
pod_ready = apps.pod_ready


class Reader:
    """Pulls a subscription of the emulator, acking, and keeps what it saw by ``ce-subject``."""

    def __init__(self, node: Node, project: str, subscription: str) -> None:
        os.environ["PUBSUB_EMULATOR_HOST"] = node.exports["PUBSUB_EMULATOR_HOST"]
        self.client = pubsub_v1.SubscriberClient()
        self.path = self.client.subscription_path(project, subscription)
        self.subjects: list[str] = []
        self.types: list[str] = []
        self.ids: dict[str, set[str]] = {}
        """ce-subject -> the distinct ce-ids seen for it."""

    def pull(self) -> None:
        response = self.client.pull(
            request={"subscription": self.path, "max_messages": 500}, timeout=10
        )
        if response.received_messages:
            for received in response.received_messages:
                attributes = received.message.attributes
                self.subjects.append(attributes.get("ce-subject", ""))
                self.types.append(attributes.get("ce-type", ""))
                self.ids.setdefault(attributes.get("ce-subject", ""), set()).add(
                    attributes.get("ce-id", "")
                )
            self.client.acknowledge(
                request={
                    "subscription": self.path,
                    "ack_ids": [r.ack_id for r in response.received_messages],
                }
            )

    def wait_for(self, subjects: set[str], *, wait: float = WAIT) -> None:
        def arrived() -> bool:
            self.pull()
            return subjects <= set(self.subjects)

        eventually(
            arrived, what=f"events for {sorted(subjects - set(self.subjects))[:5]}", wait=wait
        )

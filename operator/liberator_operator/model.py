"""Raw Kubernetes bodies as ``TypedDict``s: the EntityPublisher and EventSeed specs.

The CRD schema (crds/*.yaml) validates and defaults these before the operator sees them, so the
builders read defaulted fields with ``[]``; optional fields stay ``NotRequired``.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

__all__ = [
    "GROUP",
    "PUBLISHERS",
    "SEEDS",
    "VERSION",
    "Condition",
    "DeadLetterSpec",
    "EntityPublisherSpec",
    "EntitySpec",
    "EventSeedSpec",
    "LabelSelector",
    "MongoSpec",
    "PubSubSpec",
    "Publisher",
    "RedisSpec",
    "SecretKeyRef",
    "SidecarSpec",
    "SubscriptionSpec",
]

GROUP = "liberator.io"
VERSION = "v1alpha1"
PUBLISHERS = "entitypublishers"
SEEDS = "eventseeds"


class SecretKeyRef(TypedDict):
    name: str
    key: str


class Requirement(TypedDict):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: NotRequired[list[str]]


class LabelSelector(TypedDict, total=False):
    matchLabels: dict[str, str]
    matchExpressions: list[Requirement]


class MongoSpec(TypedDict):
    uriSecretRef: SecretKeyRef
    database: str
    collection: str
    outboxCollection: NotRequired[str]


class EntitySpec(TypedDict):
    type: str
    idField: str
    eventContextField: str
    versionField: NotRequired[str]
    excludeFields: NotRequired[list[str]]
    source: NotRequired[str]


class DeadLetterSpec(TypedDict):
    topic: str
    maxDeliveryAttempts: int


class SubscriptionSpec(TypedDict):
    name: str
    source: Literal["live", "seed"]
    ackDeadlineSeconds: int
    enableMessageOrdering: bool
    filter: NotRequired[str]
    deadLetter: NotRequired[DeadLetterSpec]


class PubSubSpec(TypedDict):
    project: str
    topic: str
    seedTopic: NotRequired[str]
    subscriptions: NotRequired[list[SubscriptionSpec]]


class RedisSpec(TypedDict, total=False):
    url: str
    secretRef: SecretKeyRef


class SidecarSpec(TypedDict, total=False):
    image: str
    imagePullPolicy: str
    logLevel: str
    leaseTtlSeconds: int
    resources: dict[str, dict[str, Any]]


class EntityPublisherSpec(TypedDict):
    selector: LabelSelector
    allowMatchAll: bool
    mongo: MongoSpec
    entity: EntitySpec
    pubsub: PubSubSpec
    redis: RedisSpec
    sidecar: SidecarSpec
    deletionPolicy: Literal["Retain", "Delete"]
    paused: bool
    stallAfterSeconds: NotRequired[int]
    resumePointMarginPercent: NotRequired[int]


class Publisher(TypedDict):
    """What injection and seeding need of one EntityPublisher."""

    namespace: str
    name: str
    spec: EntityPublisherSpec


class EventSeedSpec(TypedDict):
    publisher: str
    mode: Literal["latest", "history"]
    batchSize: int
    rateLimit: int
    backoffLimit: int
    filter: NotRequired[dict[str, Any]]
    topic: NotRequired[str]
    allowEmpty: NotRequired[bool]
    serviceAccountName: NotRequired[str]


class Condition(TypedDict):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str
    lastTransitionTime: str
    observedGeneration: NotRequired[int]

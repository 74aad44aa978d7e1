"""Settings: the sidecar contract's environment, parsed and checked once at start.

``Settings.from_env`` reads the variables of ``contract.CONTRACT``. A missing or malformed variable
raises ``ConfigError`` with one line: the variable, what is wrong, and how to fix it. Variables are
checked in contract order and the first problem is reported. Values are stripped of surrounding
white space (a secret mounted from a file often ends in a newline), and an optional variable set
to the empty string counts as unset.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from liberator_publisher.core import contract as c
from liberator_publisher.core import validation as rules
from liberator_publisher.core.contract import CONTRACT, DEFAULT_HTTP_PORT, default_outbox
from liberator_publisher.core.errors import UsageError
from liberator_publisher.core.mapping import EventMapping
from liberator_publisher.core.validation import LOG_FORMATS, LOG_LEVELS, InvalidValue

__all__ = ["LOG_FORMATS", "LOG_LEVELS", "ConfigError", "Settings"]


_T = TypeVar("_T")


class ConfigError(UsageError):
    """A missing or malformed variable. The message is one line: ``VAR: what is wrong; fix``."""

    def __init__(self, variable: str, problem: str, fix: str) -> None:
        super().__init__(f"{variable}: {problem}; {fix}")
        self.variable = variable
        """The environment variable at fault."""


@dataclass(frozen=True)
class Settings:
    """The publisher's configuration: one field per contract variable, plus tuning."""

    mongo_uri: str = field(repr=False)
    """LIBERATOR_MONGO_URI: MongoDB connection string (kept out of repr: it may hold a password)."""
    database: str
    """LIBERATOR_DATABASE: database of the entity and outbox collections."""
    collection: str
    """LIBERATOR_COLLECTION: the entity collection to watch."""
    entity_type: str
    """LIBERATOR_ENTITY_TYPE: prefix of derived CloudEvent types."""
    pubsub_project: str
    """LIBERATOR_PUBSUB_PROJECT: Google Cloud project of the topic."""
    topic: str
    """LIBERATOR_TOPIC: Pub/Sub topic id for live events."""
    redis_url: str = field(repr=False)
    """LIBERATOR_REDIS_URL: Redis URL for the lease and status (kept out of repr)."""
    pubsub_emulator_host: str | None = None
    """PUBSUB_EMULATOR_HOST: ``host:port`` of a Pub/Sub emulator, or None for real Pub/Sub."""
    outbox_collection: str = ""
    """LIBERATOR_OUTBOX_COLLECTION: the outbox collection; ``from_env`` defaults it to
    ``<collection>.outbox``."""
    source: str = ""
    """LIBERATOR_SOURCE: CloudEvent source; ``from_env`` defaults it to
    ``//liberator/<database>/<collection>``."""
    id_field: str = "_id"
    """LIBERATOR_ID_FIELD: top-level field with the entity id."""
    version_field: str | None = None
    """LIBERATOR_VERSION_FIELD: top-level field with the entity version, or None."""
    event_context_field: str = "_event"
    """LIBERATOR_EVENT_CONTEXT_FIELD: top-level field with the event context."""
    exclude_fields: frozenset[str] = frozenset()
    """LIBERATOR_EXCLUDE_FIELDS: top-level fields left out of the data."""
    http_port: int = DEFAULT_HTTP_PORT
    """LIBERATOR_HTTP_PORT: port of /healthz, /readyz and /metrics."""
    lease_ttl_seconds: float = c.LEASE_TTL_SECONDS
    """LIBERATOR_LEASE_TTL_SECONDS: leader lease time-to-live."""
    publisher: str = ""
    """LIBERATOR_PUBLISHER: ``<namespace>/<name>`` of the EntityPublisher; ``from_env`` defaults
    it to ``<database>/<collection>``."""
    log_level: str = "INFO"
    """LIBERATOR_LOG_LEVEL: one of LOG_LEVELS (upper case)."""
    log_format: str = "text"
    """LIBERATOR_LOG_FORMAT: one of LOG_FORMATS (lower case)."""
    pod_name: str = ""
    """LIBERATOR_POD_NAME: this replica's name; ``from_env`` defaults it to the host name."""
    batch_size: int = c.BATCH_SIZE
    """LIBERATOR_BATCH_SIZE: change stream batch size (documents per getMore)."""
    max_await_ms: int = c.MAX_AWAIT_MS
    """LIBERATOR_MAX_AWAIT_MS: longest wait of a change stream getMore for new changes, in ms."""
    sweep_interval_seconds: float = c.SWEEP_INTERVAL_SECONDS
    """LIBERATOR_SWEEP_INTERVAL_SECONDS: how often the relay sweeps for stale pending events."""
    pending_age_seconds: float = c.PENDING_AGE_SECONDS
    """LIBERATOR_PENDING_AGE_SECONDS: age after which the sweep publishes a pending event."""
    stall_after_seconds: float = c.STALL_AFTER_SECONDS
    """LIBERATOR_STALL_AFTER_SECONDS: how long the publisher may not move (pending events and no
    publish, or captured changes and no checkpoint) before it reports itself stalled."""
    resume_margin_percent: int = c.RESUME_MARGIN_PERCENT
    """LIBERATOR_RESUME_MARGIN_PERCENT: a checkpoint whose headroom (its distance from the oldest
    oplog entry) is below this share of the oplog window is reported at risk (headroom.py);
    1 to 99."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Parse the contract's variables from ``env``; ``ConfigError`` names the first problem."""
        reader = _Reader(env)
        mongo_uri = reader.required("LIBERATOR_MONGO_URI", rules.mongo_uri)
        database = reader.required("LIBERATOR_DATABASE", rules.database_name)
        collection = reader.required("LIBERATOR_COLLECTION", rules.collection_name)
        where: dict[str, Any] = {
            "mongo_uri": mongo_uri,
            "database": database,
            "collection": collection,
            "entity_type": reader.required("LIBERATOR_ENTITY_TYPE", rules.entity_type),
            "pubsub_project": reader.required("LIBERATOR_PUBSUB_PROJECT", rules.project_id),
            "topic": reader.required("LIBERATOR_TOPIC", rules.topic_id),
            "redis_url": reader.required("LIBERATOR_REDIS_URL", rules.redis_url),
            "pubsub_emulator_host": reader.optional("PUBSUB_EMULATOR_HOST", rules.host_port, None),
        }
        mapping = _mapping_fields(reader, database, collection)
        return cls(**where, **mapping, **_process_fields(reader, f"{database}/{collection}"))

    def mapping(self) -> EventMapping:
        """How this collection's documents become CloudEvents."""
        return EventMapping(
            entity_type=self.entity_type,
            source=self.source,
            id_field=self.id_field,
            version_field=self.version_field,
            event_context_field=self.event_context_field,
            exclude_fields=self.exclude_fields,
        )


_KNOWN = frozenset(var.name for var in CONTRACT)


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def required(self, name: str, parse: Callable[[str], _T]) -> _T:
        assert name in _KNOWN, name  # every variable read must be in the contract
        value = self._env.get(name, "").strip()
        if not value:
            state = "empty" if name in self._env else "not set"
            raise ConfigError(name, f"required but {state}", f"set it: {_CONTRACT_DOC[name]}")
        return self._parse(name, value, parse)

    def optional(self, name: str, parse: Callable[[str], _T], default: _U) -> _T | _U:
        assert name in _KNOWN, name
        value = self._env.get(name, "").strip()
        if not value:
            return default
        return self._parse(name, value, parse)

    @staticmethod
    def _parse(name: str, value: str, parse: Callable[[str], _T]) -> _T:
        try:
            return parse(value)
        except InvalidValue as invalid:
            raise ConfigError(name, invalid.problem, invalid.fix) from None


_U = TypeVar("_U")
_CONTRACT_DOC = {var.name: var.doc.replace("`", "'") for var in CONTRACT}


def _mapping_fields(reader: _Reader, database: str, collection: str) -> dict[str, Any]:
    """The outbox and how documents become events, with the checks across them."""
    outbox = reader.optional(
        "LIBERATOR_OUTBOX_COLLECTION", rules.collection_name, default_outbox(collection)
    )
    if outbox == collection:
        raise ConfigError(
            "LIBERATOR_OUTBOX_COLLECTION",
            f"{outbox!r} is the entity collection itself",
            "name a separate collection, or leave it unset for <collection>.outbox",
        )
    source = reader.optional(
        "LIBERATOR_SOURCE", rules.source_reference, f"//liberator/{database}/{collection}"
    )
    id_field = reader.optional("LIBERATOR_ID_FIELD", rules.field_name, "_id")
    version_field = reader.optional("LIBERATOR_VERSION_FIELD", rules.field_name, None)
    if version_field is not None and version_field == id_field:
        raise ConfigError(
            "LIBERATOR_VERSION_FIELD",
            f"{version_field!r} is also LIBERATOR_ID_FIELD",
            "name the field that holds the version",
        )
    context_field = reader.optional("LIBERATOR_EVENT_CONTEXT_FIELD", rules.field_name, "_event")
    if context_field in (id_field, version_field):
        raise ConfigError(
            "LIBERATOR_EVENT_CONTEXT_FIELD",
            f"{context_field!r} is also the id or version field",
            "name a separate field, or leave it unset for _event",
        )
    exclude = reader.optional("LIBERATOR_EXCLUDE_FIELDS", rules.field_list, frozenset())
    if id_field in exclude:
        raise ConfigError(
            "LIBERATOR_EXCLUDE_FIELDS",
            f"the id field {id_field!r} cannot be excluded",
            f"remove {id_field!r} from the list",
        )
    return {
        "outbox_collection": outbox,
        "source": source,
        "id_field": id_field,
        "version_field": version_field,
        "event_context_field": context_field,
        "exclude_fields": exclude,
    }


def _process_fields(reader: _Reader, default_publisher: str) -> dict[str, Any]:
    """The process, the lease, the reports and the loops' tuning, each with its contract default."""
    return {
        "http_port": reader.optional("LIBERATOR_HTTP_PORT", rules.port, DEFAULT_HTTP_PORT),
        "lease_ttl_seconds": reader.optional(
            "LIBERATOR_LEASE_TTL_SECONDS", rules.positive_float, c.LEASE_TTL_SECONDS
        ),
        "publisher": reader.optional(
            "LIBERATOR_PUBLISHER", rules.publisher_name, default_publisher
        ),
        "stall_after_seconds": reader.optional(
            "LIBERATOR_STALL_AFTER_SECONDS", rules.positive_float, c.STALL_AFTER_SECONDS
        ),
        "resume_margin_percent": reader.optional(
            "LIBERATOR_RESUME_MARGIN_PERCENT", rules.percent, c.RESUME_MARGIN_PERCENT
        ),
        "log_level": reader.optional("LIBERATOR_LOG_LEVEL", rules.log_level, "INFO"),
        "log_format": reader.optional("LIBERATOR_LOG_FORMAT", rules.log_format, "text"),
        "pod_name": (
            reader.optional("LIBERATOR_POD_NAME", rules.any_text, None) or socket.gethostname()
        ),
        "batch_size": reader.optional("LIBERATOR_BATCH_SIZE", rules.positive_int, c.BATCH_SIZE),
        "max_await_ms": reader.optional(
            "LIBERATOR_MAX_AWAIT_MS", rules.positive_int, c.MAX_AWAIT_MS
        ),
        "sweep_interval_seconds": reader.optional(
            "LIBERATOR_SWEEP_INTERVAL_SECONDS", rules.positive_float, c.SWEEP_INTERVAL_SECONDS
        ),
        "pending_age_seconds": reader.optional(
            "LIBERATOR_PENDING_AGE_SECONDS", rules.positive_float, c.PENDING_AGE_SECONDS
        ),
    }

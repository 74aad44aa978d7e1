"""Settings: the sidecar contract's environment, parsed and checked once at start.

``Settings.from_env`` reads the variables of ``contract.CONTRACT``. A missing or malformed variable
raises ``ConfigError`` with one line: the variable, what is wrong, and how to fix it. Variables are
checked in contract order and the first problem is reported. Values are stripped of surrounding
white space (a secret mounted from a file often ends in a newline), and an optional variable set
to the empty string counts as unset.
"""

from __future__ import annotations

import math
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from pymongo.errors import ConfigurationError, InvalidURI
from pymongo.uri_parser import parse_uri, parse_userinfo, split_hosts, split_options
from redis.connection import parse_url

from liberator_publisher.command import UsageError
from liberator_publisher.contract import CONTRACT, DEFAULT_HTTP_PORT
from liberator_publisher.event import EventMapping
from liberator_publisher.names import RESOURCE_ID_RULE, is_resource_id

__all__ = ["LOG_FORMATS", "LOG_LEVELS", "ConfigError", "Settings"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")

# Project ids: 6-30 of [a-z0-9-], starting with a letter, not ending with '-'; legacy
# domain-scoped ones carry a "domain.com:" prefix.
_PROJECT = re.compile(r"(?:[a-z0-9][a-z0-9.\-]*[a-z0-9]:)?[a-z][a-z0-9\-]{4,28}[a-z0-9]")
_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9.\-]{0,251}[a-z0-9])?")
_ENTITY_TYPE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.\-]*[A-Za-z0-9_])?")
_HOST_PORT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+):(\d+)")
_BAD_DATABASE_CHARS = set('/\\. "$*<>:|?\0')

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
    lease_ttl_seconds: float = 10.0
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
    batch_size: int = 500
    """LIBERATOR_BATCH_SIZE: change stream batch size (documents per getMore)."""
    max_await_ms: int = 500
    """LIBERATOR_MAX_AWAIT_MS: longest wait of a change stream getMore for new changes, in ms."""
    sweep_interval_seconds: float = 10.0
    """LIBERATOR_SWEEP_INTERVAL_SECONDS: how often the relay sweeps for stale pending events."""
    pending_age_seconds: float = 30.0
    """LIBERATOR_PENDING_AGE_SECONDS: age after which the sweep publishes a pending event."""
    stall_after_seconds: float = 300.0
    """LIBERATOR_STALL_AFTER_SECONDS: how long the publisher may not move (pending events and no
    publish, or captured changes and no checkpoint) before it reports itself stalled."""
    resume_margin_percent: int = 25
    """LIBERATOR_RESUME_MARGIN_PERCENT: a checkpoint whose headroom (its distance from the oldest
    oplog entry) is below this share of the oplog window is reported at risk (headroom.py);
    1 to 99."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Parse the contract's variables from ``env``; ``ConfigError`` names the first problem."""
        reader = _Reader(env)
        mongo_uri = reader.required("LIBERATOR_MONGO_URI", _mongo_uri)
        database = reader.required("LIBERATOR_DATABASE", _database)
        collection = reader.required("LIBERATOR_COLLECTION", _collection)
        entity_type = reader.required("LIBERATOR_ENTITY_TYPE", _entity_type)
        project = reader.required("LIBERATOR_PUBSUB_PROJECT", _project)
        topic = reader.required("LIBERATOR_TOPIC", _topic)
        redis_url = reader.required("LIBERATOR_REDIS_URL", _redis_url)
        emulator = reader.optional("PUBSUB_EMULATOR_HOST", _host_port, None)
        outbox = reader.optional("LIBERATOR_OUTBOX_COLLECTION", _collection,
                                 f"{collection}.outbox")
        if outbox == collection:
            raise ConfigError("LIBERATOR_OUTBOX_COLLECTION", f"{outbox!r} is the entity "
                              "collection itself", "name a separate collection, or leave it "
                              "unset for <collection>.outbox")
        source = reader.optional("LIBERATOR_SOURCE", _source,
                                 f"//liberator/{database}/{collection}")
        id_field = reader.optional("LIBERATOR_ID_FIELD", _field_name, "_id")
        version_field = reader.optional("LIBERATOR_VERSION_FIELD", _field_name, None)
        if version_field is not None and version_field == id_field:
            raise ConfigError("LIBERATOR_VERSION_FIELD", f"{version_field!r} is also "
                              "LIBERATOR_ID_FIELD", "name the field that holds the version")
        context_field = reader.optional("LIBERATOR_EVENT_CONTEXT_FIELD", _field_name, "_event")
        if context_field in (id_field, version_field):
            raise ConfigError("LIBERATOR_EVENT_CONTEXT_FIELD", f"{context_field!r} is also the "
                              "id or version field", "name a separate field, or leave it unset "
                              "for _event")
        exclude = reader.optional("LIBERATOR_EXCLUDE_FIELDS", _field_list, frozenset())
        if id_field in exclude:
            raise ConfigError("LIBERATOR_EXCLUDE_FIELDS", f"the id field {id_field!r} cannot "
                              "be excluded", f"remove {id_field!r} from the list")
        return cls(
            mongo_uri=mongo_uri,
            database=database,
            collection=collection,
            entity_type=entity_type,
            pubsub_project=project,
            topic=topic,
            redis_url=redis_url,
            pubsub_emulator_host=emulator,
            outbox_collection=outbox,
            source=source,
            id_field=id_field,
            version_field=version_field,
            event_context_field=context_field,
            exclude_fields=exclude,
            http_port=reader.optional("LIBERATOR_HTTP_PORT", _port, DEFAULT_HTTP_PORT),
            lease_ttl_seconds=reader.optional("LIBERATOR_LEASE_TTL_SECONDS", _positive_float,
                                              10.0),
            publisher=reader.optional("LIBERATOR_PUBLISHER", _publisher,
                                      f"{database}/{collection}"),
            log_level=reader.optional("LIBERATOR_LOG_LEVEL", _log_level, "INFO"),
            log_format=reader.optional("LIBERATOR_LOG_FORMAT", _log_format, "text"),
            pod_name=reader.optional("LIBERATOR_POD_NAME", _any, None) or socket.gethostname(),
            batch_size=reader.optional("LIBERATOR_BATCH_SIZE", _positive_int, 500),
            max_await_ms=reader.optional("LIBERATOR_MAX_AWAIT_MS", _positive_int, 500),
            sweep_interval_seconds=reader.optional("LIBERATOR_SWEEP_INTERVAL_SECONDS",
                                                   _positive_float, 10.0),
            pending_age_seconds=reader.optional("LIBERATOR_PENDING_AGE_SECONDS",
                                                _positive_float, 30.0),
            stall_after_seconds=reader.optional("LIBERATOR_STALL_AFTER_SECONDS",
                                                _positive_float, 300.0),
            resume_margin_percent=reader.optional("LIBERATOR_RESUME_MARGIN_PERCENT", _percent,
                                                  25),
        )

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


class _InvalidError(Exception):
    """Raised by a parser: what is wrong and how to fix it; the reader adds the variable."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix


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
        except _InvalidError as invalid:
            raise ConfigError(name, invalid.problem, invalid.fix) from None


_U = TypeVar("_U")
_CONTRACT_DOC = {var.name: var.doc.replace("`", "'") for var in CONTRACT}


def _any(value: str) -> str:
    return value


def _mongo_uri(value: str) -> str:
    fix = ("use mongodb://[user:password@]host[:port][,host...]/?replicaSet=name with special "
           "characters in user and password percent-encoded")
    userinfo, safe = _hide_password(value)
    try:
        if userinfo is not None:
            parse_userinfo(userinfo)  # its errors quote nothing of the user information
        if safe.startswith("mongodb+srv://"):
            # parse_uri would resolve the SRV record; keep start-up free of DNS and check syntax.
            _srv_syntax(safe)
        else:
            parse_uri(safe)  # the password is hidden, so pymongo's message cannot quote it
    except (InvalidURI, ConfigurationError, ValueError) as error:
        raise _InvalidError(f"not a valid MongoDB URI ({error})", fix) from None
    return value


def _srv_syntax(uri: str) -> None:
    host_part, _, options = uri[len("mongodb+srv://"):].partition("?")
    host_part = host_part.partition("/")[0].rpartition("@")[2]
    nodes = split_hosts(host_part, default_port=None)
    if len(nodes) != 1 or nodes[0][1] is not None:
        raise InvalidURI("mongodb+srv:// URIs must name one host and no port")
    if options:
        split_options(options)


def _hide_password(uri: str) -> tuple[str | None, str]:
    """The URI's user information (or None), and the URI with any password replaced.

    Splits as pymongo and redis-py do: the user information ends at the last '@' before the
    first '/' or '?' after the scheme.
    """
    scheme, separator, rest = uri.partition("://")
    host_part = rest.partition("?")[0].partition("/")[0]
    if not separator or "@" not in host_part:
        return None, uri
    userinfo = host_part.rpartition("@")[0]
    user, colon, _ = userinfo.partition(":")
    hidden = f"{user}:hidden" if colon else user
    return userinfo, f"{scheme}://{hidden}@{rest[len(userinfo) + 1:]}"


def _database(value: str) -> str:
    bad = sorted(set(value) & _BAD_DATABASE_CHARS)
    if bad or len(value.encode()) > 63:
        raise _InvalidError(f"{value!r} is not a MongoDB database name",
                       "use at most 63 bytes without / \\ . space \" $ * < > : | ?")
    return value


def _collection(value: str) -> str:
    if "$" in value or "\0" in value or value.startswith(("system.", ".")) or value.endswith("."):
        raise _InvalidError(f"{value!r} is not a usable MongoDB collection name",
                       "use a name without '$', not starting with 'system.'")
    return value


def _entity_type(value: str) -> str:
    if not _ENTITY_TYPE.fullmatch(value):
        raise _InvalidError(f"{value!r} is not an entity type",
                       "use letters, digits, '.', '_' and '-', such as 'quote'")
    return value


def _project(value: str) -> str:
    if not _PROJECT.fullmatch(value):
        raise _InvalidError(f"{value!r} is not a Google Cloud project id",
                       "use 6-30 lower-case letters, digits and hyphens, starting with a letter")
    return value


def _topic(value: str) -> str:
    if value.startswith("projects/"):
        raise _InvalidError(f"{value!r} is a topic path, not a topic id",
                       "give the id only (the last part); the project comes from "
                       "LIBERATOR_PUBSUB_PROJECT")
    if not is_resource_id(value):
        raise _InvalidError(f"{value!r} is not a Pub/Sub topic id", f"use {RESOURCE_ID_RULE}")
    return value


def _redis_url(value: str) -> str:
    fix = "use redis://[:password@]host:port/db, rediss://... or unix:///path"
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise _InvalidError("not a Redis URL (the scheme must be redis://, rediss:// or "
                            "unix://)", fix)
    try:
        # redis-py leaves parse_url unannotated; the password is hidden from its messages.
        parse_url(_hide_password(value)[1])  # type: ignore[no-untyped-call]
    except ValueError as error:
        raise _InvalidError(f"not a valid Redis URL ({error})", fix) from None
    if not value.startswith("unix://"):
        # redis-py silently ignores a database path that is not a number; refuse it instead.
        path = value.partition("://")[2].partition("?")[0].partition("/")[2]
        if path and not path.isdigit():
            raise _InvalidError(f"not a valid Redis URL (database {path!r} is not a number)",
                                fix)
    return value


def _host_port(value: str) -> str:
    match = _HOST_PORT.fullmatch(value)
    if match is None or not 1 <= int(match.group(1)) <= 65535:
        raise _InvalidError(f"{value!r} is not host:port", "use the emulator's address, such as "
                       "127.0.0.1:8085, or unset it for real Pub/Sub")
    return value


def _source(value: str) -> str:
    if any(c.isspace() for c in value):
        raise _InvalidError(f"{value!r} is not a URI reference (it holds white space)",
                       "use a URI reference such as //liberator/<database>/<collection>")
    return value


def _field_name(value: str) -> str:
    if value.startswith("$") or "." in value or "\0" in value:
        raise _InvalidError(f"{value!r} is not a top-level field name",
                       "name a top-level field: no '.' (nested paths are not supported), "
                       "not starting with '$'")
    return value


def _field_list(value: str) -> frozenset[str]:
    names = [item.strip() for item in value.split(",")]
    if "" in names:
        raise _InvalidError(f"{value!r} has an empty item",
                       "list field names separated by single commas, such as 'secret,internal'")
    for name in names:
        try:
            _field_name(name)
        except _InvalidError as invalid:
            raise _InvalidError(f"item {invalid.problem}", invalid.fix) from None
    return frozenset(names)


def _port(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise _InvalidError(f"{value!r} is not a port number (1-65535)",
                       f"use a free port, such as {DEFAULT_HTTP_PORT}")
    return int(value)


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise _InvalidError(f"{value!r} is not a positive whole number",
                            "use an integer of 1 or more")
    return int(value)


def _percent(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 99:
        raise _InvalidError(f"{value!r} is not a whole percentage from 1 to 99",
                            "use a number such as 25 (a quarter of the oplog window)")
    return int(value)


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise _InvalidError(f"{value!r} is not a positive number of seconds",
                       "use a number above 0, such as 10 or 2.5")
    return number


def _publisher(value: str) -> str:
    namespace, slash, name = value.partition("/")
    if not slash or not _DNS_LABEL.fullmatch(namespace) or not _DNS_SUBDOMAIN.fullmatch(name):
        raise _InvalidError(f"{value!r} is not <namespace>/<name>",
                       "use the EntityPublisher's namespace and name, such as 'shop/quotes'")
    return value


def _log_level(value: str) -> str:
    if value.upper() not in LOG_LEVELS:
        raise _InvalidError(f"{value!r} is not a log level", f"use one of {', '.join(LOG_LEVELS)}")
    return value.upper()


def _log_format(value: str) -> str:
    if value.lower() not in LOG_FORMATS:
        raise _InvalidError(f"{value!r} is not a log format",
                            f"use one of {', '.join(LOG_FORMATS)}")
    return value.lower()

"""Value rules: one home for every check of a name, URI or number that Liberator reads.

Pure. Each function takes the text as given and returns the parsed value, or raises
:class:`InvalidValue` with what is wrong and how to fix it. The caller adds where the value came
from: the sidecar's settings name the variable (``ConfigError``), the commands name the flag or
variable (``UsageError``), so every input path says the same thing about the same mistake.
"""

from __future__ import annotations

import math
import re

from pymongo.errors import ConfigurationError, InvalidURI
from pymongo.uri_parser import parse_uri, parse_userinfo, split_hosts, split_options
from redis.connection import parse_url

from liberator_publisher.core.contract import DEFAULT_HTTP_PORT

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "RESOURCE_ID_RULE",
    "InvalidValue",
    "any_text",
    "collection_name",
    "database_name",
    "entity_type",
    "field_list",
    "field_name",
    "hide_password",
    "host_port",
    "is_resource_id",
    "log_format",
    "log_level",
    "mongo_uri",
    "percent",
    "port",
    "positive_float",
    "positive_int",
    "project_id",
    "publisher_name",
    "redis_url",
    "source_reference",
    "topic_id",
]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")

RESOURCE_ID_RULE = (
    "3-255 of letters, digits and - _ . ~ + %, starting with a letter and not with 'goog'"
)
"""What :func:`is_resource_id` checks, as error messages say it: Pub/Sub's rule for a topic or
subscription id (the CRD's CEL rule says the same for spec.pubsub)."""

_RESOURCE_ID = re.compile(r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")
# Project ids: 6-30 of [a-z0-9-], starting with a letter, not ending with '-'; legacy
# domain-scoped ones carry a "domain.com:" prefix.
_PROJECT = re.compile(r"(?:[a-z0-9][a-z0-9.\-]*[a-z0-9]:)?[a-z][a-z0-9\-]{4,28}[a-z0-9]")
_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9.\-]{0,251}[a-z0-9])?")
_ENTITY_TYPE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.\-]*[A-Za-z0-9_])?")
_HOST_PORT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+):(\d+)")
_BAD_DATABASE_CHARS = set('/\\. "$*<>:|?\0')


class InvalidValue(ValueError):  # noqa: N818 - a value, not an error of ours
    """What is wrong with a value and how to fix it; the caller adds where it came from."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}; {fix}")
        self.problem = problem
        self.fix = fix

    def named(self, where: str) -> str:
        """The one-line message for the variable or flag ``where``."""
        return f"{where}: {self.problem}; {self.fix}"


def is_resource_id(value: str) -> bool:
    """Whether Pub/Sub accepts ``value`` as a topic or subscription id."""
    return bool(_RESOURCE_ID.fullmatch(value)) and not value.lower().startswith("goog")


def any_text(value: str) -> str:
    return value


def mongo_uri(value: str) -> str:
    fix = (
        "use mongodb://[user:password@]host[:port][,host...]/?replicaSet=name with special "
        "characters in user and password percent-encoded"
    )
    userinfo, safe = hide_password(value)
    try:
        if userinfo is not None:
            parse_userinfo(userinfo)  # its errors quote nothing of the user information
        if safe.startswith("mongodb+srv://"):
            # parse_uri would resolve the SRV record; keep start-up free of DNS and check syntax.
            _srv_syntax(safe)
        else:
            parse_uri(safe)  # the password is hidden, so pymongo's message cannot quote it
    except (InvalidURI, ConfigurationError, ValueError) as error:
        raise InvalidValue(f"not a valid MongoDB URI ({error})", fix) from None
    return value


def _srv_syntax(uri: str) -> None:
    host_part, _, options = uri[len("mongodb+srv://") :].partition("?")
    host_part = host_part.partition("/")[0].rpartition("@")[2]
    nodes = split_hosts(host_part, default_port=None)
    if len(nodes) != 1 or nodes[0][1] is not None:
        raise InvalidURI("mongodb+srv:// URIs must name one host and no port")
    if options:
        split_options(options)


def hide_password(uri: str) -> tuple[str | None, str]:
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
    return userinfo, f"{scheme}://{hidden}@{rest[len(userinfo) + 1 :]}"


def database_name(value: str) -> str:
    bad = sorted(set(value) & _BAD_DATABASE_CHARS)
    if bad or len(value.encode()) > 63:
        raise InvalidValue(
            f"{value!r} is not a MongoDB database name",
            'use at most 63 bytes without / \\ . space " $ * < > : | ?',
        )
    return value


def collection_name(value: str) -> str:
    if "$" in value or "\0" in value or value.startswith(("system.", ".")) or value.endswith("."):
        raise InvalidValue(
            f"{value!r} is not a usable MongoDB collection name",
            "use a name without '$', not starting with 'system.'",
        )
    return value


def entity_type(value: str) -> str:
    if not _ENTITY_TYPE.fullmatch(value):
        raise InvalidValue(
            f"{value!r} is not an entity type",
            "use letters, digits, '.', '_' and '-', such as 'quote'",
        )
    return value


def project_id(value: str) -> str:
    if not _PROJECT.fullmatch(value):
        raise InvalidValue(
            f"{value!r} is not a Google Cloud project id",
            "use 6-30 lower-case letters, digits and hyphens, starting with a letter",
        )
    return value


def topic_id(value: str) -> str:
    if value.startswith("projects/"):
        raise InvalidValue(
            f"{value!r} is a topic path, not a topic id",
            "give the id only (the last part); the project comes from LIBERATOR_PUBSUB_PROJECT",
        )
    if not is_resource_id(value):
        raise InvalidValue(f"{value!r} is not a Pub/Sub topic id", f"use {RESOURCE_ID_RULE}")
    return value


def redis_url(value: str) -> str:
    fix = "use redis://[:password@]host:port/db, rediss://... or unix:///path"
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise InvalidValue(
            "not a Redis URL (the scheme must be redis://, rediss:// or unix://)", fix
        )
    try:
        # redis-py leaves parse_url unannotated; the password is hidden from its messages.
        parse_url(hide_password(value)[1])  # type: ignore[no-untyped-call]
    except ValueError as error:
        raise InvalidValue(f"not a valid Redis URL ({error})", fix) from None
    if not value.startswith("unix://"):
        # redis-py silently ignores a database path that is not a number; refuse it instead.
        path = value.partition("://")[2].partition("?")[0].partition("/")[2]
        if path and not path.isdigit():
            raise InvalidValue(f"not a valid Redis URL (database {path!r} is not a number)", fix)
    return value


def host_port(value: str) -> str:
    match = _HOST_PORT.fullmatch(value)
    if match is None or not 1 <= int(match.group(1)) <= 65535:
        raise InvalidValue(
            f"{value!r} is not host:port",
            "use the emulator's address, such as 127.0.0.1:8085, or unset it for real Pub/Sub",
        )
    return value


def source_reference(value: str) -> str:
    if any(c.isspace() for c in value):
        raise InvalidValue(
            f"{value!r} is not a URI reference (it holds white space)",
            "use a URI reference such as //liberator/<database>/<collection>",
        )
    return value


def field_name(value: str) -> str:
    if value.startswith("$") or "." in value or "\0" in value:
        raise InvalidValue(
            f"{value!r} is not a top-level field name",
            "name a top-level field: no '.' (nested paths are not supported), "
            "not starting with '$'",
        )
    return value


def field_list(value: str) -> frozenset[str]:
    names = [item.strip() for item in value.split(",")]
    if "" in names:
        raise InvalidValue(
            f"{value!r} has an empty item",
            "list field names separated by single commas, such as 'secret,internal'",
        )
    for name in names:
        try:
            field_name(name)
        except InvalidValue as invalid:
            raise InvalidValue(f"item {invalid.problem}", invalid.fix) from None
    return frozenset(names)


def port(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise InvalidValue(
            f"{value!r} is not a port number (1-65535)",
            f"use a free port, such as {DEFAULT_HTTP_PORT}",
        )
    return int(value)


def positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise InvalidValue(
            f"{value!r} is not a positive whole number", "use an integer of 1 or more"
        )
    return int(value)


def percent(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 99:
        raise InvalidValue(
            f"{value!r} is not a whole percentage from 1 to 99",
            "use a number such as 25 (a quarter of the oplog window)",
        )
    return int(value)


def positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise InvalidValue(
            f"{value!r} is not a positive number of seconds",
            "use a number above 0, such as 10 or 2.5",
        )
    return number


def publisher_name(value: str) -> str:
    namespace, slash, name = value.partition("/")
    if not slash or not _DNS_LABEL.fullmatch(namespace) or not _DNS_SUBDOMAIN.fullmatch(name):
        raise InvalidValue(
            f"{value!r} is not <namespace>/<name>",
            "use the EntityPublisher's namespace and name, such as 'shop/quotes'",
        )
    return value


def log_level(value: str) -> str:
    if value.upper() not in LOG_LEVELS:
        raise InvalidValue(f"{value!r} is not a log level", f"use one of {', '.join(LOG_LEVELS)}")
    return value.upper()


def log_format(value: str) -> str:
    if value.lower() not in LOG_FORMATS:
        raise InvalidValue(f"{value!r} is not a log format", f"use one of {', '.join(LOG_FORMATS)}")
    return value.lower()

"""Settings.from_env: every variable, every bad value, one line naming the variable."""

from __future__ import annotations

import dataclasses
import socket
from typing import Any

import pytest

from liberator_publisher.core.contract import CONTRACT, DEFAULT_HTTP_PORT
from liberator_publisher.core.mapping import EventMapping
from liberator_publisher.core.settings import ConfigError, Settings

PASSWORD = "Sup3rS3cretPw"
REQUIRED = {
    "LIBERATOR_MONGO_URI": f"mongodb://app:{PASSWORD}@mongo-0:27017,mongo-1/?replicaSet=rs0",
    "LIBERATOR_DATABASE": "shop",
    "LIBERATOR_COLLECTION": "quotes",
    "LIBERATOR_ENTITY_TYPE": "quote",
    "LIBERATOR_PUBSUB_PROJECT": "liberator-local",
    "LIBERATOR_TOPIC": "integration-events",
    "LIBERATOR_REDIS_URL": f"redis://:{PASSWORD}@redis:6379/0",
}


def parse(**overrides: str) -> Settings:
    return Settings.from_env({**REQUIRED, **overrides})


def error_for(env: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    return caught.value


def test_required_only_gives_the_documented_defaults() -> None:
    settings = parse()
    assert settings.mongo_uri == REQUIRED["LIBERATOR_MONGO_URI"]
    assert settings.database == "shop"
    assert settings.collection == "quotes"
    assert settings.entity_type == "quote"
    assert settings.pubsub_project == "liberator-local"
    assert settings.topic == "integration-events"
    assert settings.redis_url == REQUIRED["LIBERATOR_REDIS_URL"]
    assert settings.pubsub_emulator_host is None
    assert settings.outbox_collection == "quotes.outbox"
    assert settings.source == "//liberator/shop/quotes"
    assert settings.id_field == "_id"
    assert settings.version_field is None
    assert settings.event_context_field == "_event"
    assert settings.exclude_fields == frozenset()
    assert settings.http_port == DEFAULT_HTTP_PORT == 8099
    assert settings.lease_ttl_seconds == 10.0
    assert settings.publisher == "shop/quotes"
    assert settings.log_level == "INFO"
    assert settings.log_format == "text"
    assert settings.pod_name == socket.gethostname()
    assert settings.batch_size == 500
    assert settings.max_await_ms == 500
    assert settings.sweep_interval_seconds == 10.0
    assert settings.pending_age_seconds == 30.0


def test_defaults_match_the_contract_table() -> None:
    # The contract's "default" column is for people; check it says what the code does.
    settings = parse()
    documented = {var.name: var.default for var in CONTRACT}
    assert documented["LIBERATOR_HTTP_PORT"] == str(settings.http_port)
    assert float(documented["LIBERATOR_LEASE_TTL_SECONDS"]) == settings.lease_ttl_seconds
    assert documented["LIBERATOR_ID_FIELD"] == settings.id_field
    assert documented["LIBERATOR_EVENT_CONTEXT_FIELD"] == settings.event_context_field
    assert documented["LIBERATOR_LOG_LEVEL"] == settings.log_level
    assert documented["LIBERATOR_LOG_FORMAT"] == settings.log_format
    assert int(documented["LIBERATOR_BATCH_SIZE"]) == settings.batch_size
    assert int(documented["LIBERATOR_MAX_AWAIT_MS"]) == settings.max_await_ms
    assert float(documented["LIBERATOR_SWEEP_INTERVAL_SECONDS"]) == (
        settings.sweep_interval_seconds
    )
    assert float(documented["LIBERATOR_PENDING_AGE_SECONDS"]) == settings.pending_age_seconds
    assert float(documented["LIBERATOR_STALL_AFTER_SECONDS"]) == settings.stall_after_seconds
    assert int(documented["LIBERATOR_RESUME_MARGIN_PERCENT"]) == settings.resume_margin_percent
    assert (
        documented["LIBERATOR_OUTBOX_COLLECTION"].replace("<collection>", "quotes")
        == settings.outbox_collection
    )
    assert (
        documented["LIBERATOR_SOURCE"]
        .replace("<database>", "shop")
        .replace("<collection>", "quotes")
        == settings.source
    )
    assert (
        documented["LIBERATOR_PUBLISHER"]
        .replace("<database>", "shop")
        .replace("<collection>", "quotes")
        == settings.publisher
    )


def test_every_variable_set() -> None:
    settings = parse(
        PUBSUB_EMULATOR_HOST="127.0.0.1:8085",
        LIBERATOR_OUTBOX_COLLECTION="quotes_events",
        LIBERATOR_SOURCE="https://shop.example.com/quotes",
        LIBERATOR_ID_FIELD="quoteId",
        LIBERATOR_VERSION_FIELD="version",
        LIBERATOR_EVENT_CONTEXT_FIELD="meta",
        LIBERATOR_EXCLUDE_FIELDS=" secret , internal ",
        LIBERATOR_HTTP_PORT="9100",
        LIBERATOR_LEASE_TTL_SECONDS="2.5",
        LIBERATOR_PUBLISHER="shop/quotes-publisher",
        LIBERATOR_LOG_LEVEL="debug",
        LIBERATOR_LOG_FORMAT="JSON",
        LIBERATOR_POD_NAME="quotes-7d9f-abc",
        LIBERATOR_BATCH_SIZE="1000",
        LIBERATOR_MAX_AWAIT_MS="250",
        LIBERATOR_SWEEP_INTERVAL_SECONDS="5",
        LIBERATOR_PENDING_AGE_SECONDS="60.5",
        LIBERATOR_STALL_AFTER_SECONDS="90",
        LIBERATOR_RESUME_MARGIN_PERCENT="40",
    )
    assert settings.pubsub_emulator_host == "127.0.0.1:8085"
    assert settings.outbox_collection == "quotes_events"
    assert settings.source == "https://shop.example.com/quotes"
    assert settings.id_field == "quoteId"
    assert settings.version_field == "version"
    assert settings.event_context_field == "meta"
    assert settings.exclude_fields == frozenset({"secret", "internal"})
    assert settings.http_port == 9100
    assert settings.lease_ttl_seconds == 2.5
    assert settings.publisher == "shop/quotes-publisher"
    assert settings.log_level == "DEBUG"
    assert settings.log_format == "json"
    assert settings.pod_name == "quotes-7d9f-abc"
    assert settings.stall_after_seconds == 90.0
    assert settings.resume_margin_percent == 40
    assert settings.batch_size == 1000
    assert settings.max_await_ms == 250
    assert settings.sweep_interval_seconds == 5.0
    assert settings.pending_age_seconds == 60.5
    assert settings.mapping() == EventMapping(
        entity_type="quote",
        source="https://shop.example.com/quotes",
        id_field="quoteId",
        version_field="version",
        event_context_field="meta",
        exclude_fields=frozenset({"secret", "internal"}),
    )


def test_every_contract_variable_has_a_settings_field() -> None:
    # LIBERATOR_BATCH_SIZE is Settings.batch_size, PUBSUB_EMULATOR_HOST pubsub_emulator_host.
    fields = sorted(f.name for f in dataclasses.fields(Settings))
    assert fields == sorted(var.name.removeprefix("LIBERATOR_").lower() for var in CONTRACT)


@pytest.mark.parametrize(
    "uri",
    [
        "mongodb://localhost",
        "mongodb://127.0.0.1:27017/?directConnection=true",
        "mongodb://a:1,b:2,c:3/db?replicaSet=rs0&w=majority",
        "mongodb://user%40corp:p%40ss@[::1]:27017/",
        "mongodb+srv://user:pw@cluster0.example.net/?retryWrites=true",
        "mongodb://%2Ftmp%2Fmongodb-27017.sock",
    ],
)
def test_valid_mongo_uris(uri: str) -> None:
    assert parse(LIBERATOR_MONGO_URI=uri).mongo_uri == uri


@pytest.mark.parametrize(
    "url", ["redis://localhost", "redis://:pw@h:6380/2", "rediss://u:p@h:6379", "unix:///tmp/r.s"]
)
def test_valid_redis_urls(url: str) -> None:
    assert parse(LIBERATOR_REDIS_URL=url).redis_url == url


@pytest.mark.parametrize("name", [var.name for var in CONTRACT if var.required])
@pytest.mark.parametrize("value", [None, "", "   "])
def test_required_variable_missing_or_empty(name: str, value: str | None) -> None:
    env = {k: v for k, v in REQUIRED.items() if k != name}
    if value is not None:
        env[name] = value
    error = error_for(env)
    assert error.variable == name
    assert str(error).startswith(f"{name}: required but {'not set' if value is None else 'empty'}")
    assert "set it:" in str(error)


# (variable, bad value, words the message must hold besides the variable)
BAD = [
    ("LIBERATOR_MONGO_URI", "postgres://db", "Invalid URI scheme"),
    ("LIBERATOR_MONGO_URI", "mongodb://", "not a valid MongoDB URI"),
    ("LIBERATOR_MONGO_URI", f"mongodb://app:{PASSWORD}@h:99999/", "Port must be"),
    ("LIBERATOR_MONGO_URI", f"mongodb://app:{PASSWORD}:x@h/", "must be escaped"),
    (
        "LIBERATOR_MONGO_URI",
        f"mongodb://app:{PASSWORD}@h/?replicaSet=rs0&bogus={PASSWORD}",
        "Unknown option",
    ),
    (
        "LIBERATOR_MONGO_URI",
        f"mongodb+srv://app:{PASSWORD}@h.example.net:27017/",
        "one host and no port",
    ),
    ("LIBERATOR_MONGO_URI", "mongodb+srv://a.example.net,b.example.net/", "one host"),
    ("LIBERATOR_DATABASE", "shop.prod", "not a MongoDB database name"),
    ("LIBERATOR_DATABASE", "my shop", "not a MongoDB database name"),
    ("LIBERATOR_DATABASE", "d" * 64, "at most 63 bytes"),
    ("LIBERATOR_COLLECTION", "quotes$", "not a usable MongoDB collection name"),
    ("LIBERATOR_COLLECTION", "system.users", "not starting with 'system.'"),
    ("LIBERATOR_ENTITY_TYPE", "quote line", "not an entity type"),
    ("LIBERATOR_ENTITY_TYPE", ".quote", "not an entity type"),
    ("LIBERATOR_PUBSUB_PROJECT", "My_Project", "not a Google Cloud project id"),
    ("LIBERATOR_PUBSUB_PROJECT", "abc", "not a Google Cloud project id"),
    ("LIBERATOR_PUBSUB_PROJECT", "1project", "starting with a letter"),
    ("LIBERATOR_PUBSUB_PROJECT", "project-", "not a Google Cloud project id"),
    ("LIBERATOR_TOPIC", "ab", "not a Pub/Sub topic id"),
    ("LIBERATOR_TOPIC", "1events", "starting with a letter"),
    ("LIBERATOR_TOPIC", "googevents", "not with 'goog'"),
    ("LIBERATOR_TOPIC", "events/live", "not a Pub/Sub topic id"),
    ("LIBERATOR_TOPIC", "t" * 256, "3-255"),
    ("LIBERATOR_TOPIC", "projects/p/topics/events", "a topic path, not a topic id"),
    ("LIBERATOR_REDIS_URL", "localhost:6379", "not a Redis URL"),
    ("LIBERATOR_REDIS_URL", f"redis://:{PASSWORD}@h:port/0", "Port could not be cast"),
    ("LIBERATOR_REDIS_URL", "redis://h:6379/db", "not a valid Redis URL"),
    ("PUBSUB_EMULATOR_HOST", "localhost", "not host:port"),
    ("PUBSUB_EMULATOR_HOST", "http://localhost:8085", "not host:port"),
    ("PUBSUB_EMULATOR_HOST", "localhost:0", "not host:port"),
    ("LIBERATOR_OUTBOX_COLLECTION", "out$box", "not a usable MongoDB collection name"),
    ("LIBERATOR_OUTBOX_COLLECTION", "quotes", "is the entity collection itself"),
    ("LIBERATOR_SOURCE", "//liberator/my shop", "white space"),
    ("LIBERATOR_ID_FIELD", "meta.id", "nested paths are not supported"),
    ("LIBERATOR_ID_FIELD", "$id", "not starting with '$'"),
    ("LIBERATOR_VERSION_FIELD", "a.b", "not a top-level field name"),
    ("LIBERATOR_VERSION_FIELD", "_id", "is also LIBERATOR_ID_FIELD"),
    ("LIBERATOR_EVENT_CONTEXT_FIELD", "$event", "not a top-level field name"),
    ("LIBERATOR_EVENT_CONTEXT_FIELD", "_id", "is also the id or version field"),
    ("LIBERATOR_EXCLUDE_FIELDS", "a,,b", "has an empty item"),
    ("LIBERATOR_EXCLUDE_FIELDS", "a,", "has an empty item"),
    ("LIBERATOR_EXCLUDE_FIELDS", "a, b.c", "item 'b.c' is not a top-level field name"),
    ("LIBERATOR_EXCLUDE_FIELDS", "secret,_id", "the id field '_id' cannot be excluded"),
    ("LIBERATOR_HTTP_PORT", "abc", "'abc' is not a port number (1-65535)"),
    ("LIBERATOR_HTTP_PORT", "0", "not a port number"),
    ("LIBERATOR_HTTP_PORT", "65536", "not a port number"),
    ("LIBERATOR_HTTP_PORT", "-1", "not a port number"),
    ("LIBERATOR_HTTP_PORT", "80.5", "not a port number"),
    ("LIBERATOR_LEASE_TTL_SECONDS", "0", "not a positive number of seconds"),
    ("LIBERATOR_LEASE_TTL_SECONDS", "-3", "not a positive number of seconds"),
    ("LIBERATOR_LEASE_TTL_SECONDS", "ten", "not a positive number of seconds"),
    ("LIBERATOR_LEASE_TTL_SECONDS", "nan", "not a positive number of seconds"),
    ("LIBERATOR_LEASE_TTL_SECONDS", "inf", "not a positive number of seconds"),
    ("LIBERATOR_PUBLISHER", "quotes", "not <namespace>/<name>"),
    ("LIBERATOR_PUBLISHER", "Shop/quotes", "not <namespace>/<name>"),
    ("LIBERATOR_PUBLISHER", "shop/quotes/x", "not <namespace>/<name>"),
    ("LIBERATOR_PUBLISHER", "shop/", "not <namespace>/<name>"),
    ("LIBERATOR_PUBLISHER", f"{'n' * 64}/quotes", "not <namespace>/<name>"),
    ("LIBERATOR_LOG_LEVEL", "verbose", "use one of DEBUG, INFO, WARNING, ERROR"),
    ("LIBERATOR_LOG_FORMAT", "xml", "use one of text, json"),
    ("LIBERATOR_BATCH_SIZE", "0", "not a positive whole number"),
    ("LIBERATOR_BATCH_SIZE", "1e3", "not a positive whole number"),
    ("LIBERATOR_MAX_AWAIT_MS", "-5", "not a positive whole number"),
    ("LIBERATOR_MAX_AWAIT_MS", "fast", "not a positive whole number"),
    ("LIBERATOR_SWEEP_INTERVAL_SECONDS", "0", "not a positive number of seconds"),
    ("LIBERATOR_PENDING_AGE_SECONDS", "soon", "not a positive number of seconds"),
    ("LIBERATOR_STALL_AFTER_SECONDS", "0", "not a positive number of seconds"),
    ("LIBERATOR_STALL_AFTER_SECONDS", "5m", "not a positive number of seconds"),
    ("LIBERATOR_RESUME_MARGIN_PERCENT", "0", "not a whole percentage from 1 to 99"),
    ("LIBERATOR_RESUME_MARGIN_PERCENT", "100", "not a whole percentage from 1 to 99"),
    ("LIBERATOR_RESUME_MARGIN_PERCENT", "0.25", "not a whole percentage from 1 to 99"),
]


@pytest.mark.parametrize(("name", "value", "words"), BAD)
def test_bad_value_names_the_variable_in_one_line(name: str, value: str, words: str) -> None:
    error = error_for({**REQUIRED, name: value})
    message = str(error)
    assert error.variable == name
    assert message.startswith(f"{name}: ")
    assert words in message
    assert "\n" not in message
    assert "; " in message  # what is wrong; how to fix it
    assert PASSWORD not in message
    assert isinstance(error, ValueError)


def test_every_validated_variable_has_a_bad_value_test() -> None:
    # LIBERATOR_POD_NAME accepts any name; every other variable is checked above.
    tested = {name for name, _, _ in BAD}
    assert tested | {"LIBERATOR_POD_NAME"} == {var.name for var in CONTRACT}


def test_the_first_problem_in_contract_order_is_reported() -> None:
    error = error_for({**REQUIRED, "LIBERATOR_HTTP_PORT": "x", "LIBERATOR_TOPIC": "t"})
    assert error.variable == "LIBERATOR_TOPIC"
    error = error_for({"LIBERATOR_HTTP_PORT": "x"})
    assert error.variable == "LIBERATOR_MONGO_URI"


def test_values_are_stripped_and_empty_optionals_mean_unset() -> None:
    settings = parse(
        LIBERATOR_DATABASE=" shop\n",
        LIBERATOR_HTTP_PORT=" 9000 ",
        LIBERATOR_VERSION_FIELD="",
        LIBERATOR_EXCLUDE_FIELDS=" ",
        PUBSUB_EMULATOR_HOST="",
        LIBERATOR_MONGO_URI="mongodb://h:1/\n",
    )
    assert settings.database == "shop"
    assert settings.http_port == 9000
    assert settings.version_field is None
    assert settings.exclude_fields == frozenset()
    assert settings.pubsub_emulator_host is None
    assert settings.mongo_uri == "mongodb://h:1/"


def test_unrelated_variables_are_ignored() -> None:
    assert parse(LIBERATOR_UNKNOWN="x", HOME="/root").topic == "integration-events"


def test_repr_hides_connection_strings() -> None:
    text = repr(parse())
    assert PASSWORD not in text
    assert "mongo-0" not in text
    assert "integration-events" in text


def test_settings_are_frozen() -> None:
    settings: Any = parse()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.topic = "other"


def test_mapping_uses_the_defaults() -> None:
    assert parse().mapping() == EventMapping(entity_type="quote", source="//liberator/shop/quotes")

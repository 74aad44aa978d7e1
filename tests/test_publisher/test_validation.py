"""One home for the value rules (validation.py): Pub/Sub ids, and the same message from every
input path."""

from __future__ import annotations

import pytest

from liberator_publisher.cli import main
from liberator_publisher.core import validation
from liberator_publisher.core.validation import RESOURCE_ID_RULE, InvalidValue, is_resource_id


@pytest.mark.parametrize("value", ["abc", "quotes.events", "a" + "b" * 254, "Events~1+2%3"])
def test_ids_pubsub_accepts(value: str) -> None:
    assert is_resource_id(value)


@pytest.mark.parametrize(
    "value",
    [
        "ab",
        "1abc",
        "a" * 256,
        "my events",
        "events/live",
        "goog-events",
        "GOOGLE",
        "projects/p/topics/t",
        "",
    ],
)
def test_ids_pubsub_refuses(value: str) -> None:
    assert not is_resource_id(value)
    assert "not with 'goog'" in RESOURCE_ID_RULE


@pytest.mark.parametrize(
    "command",
    [
        ["eventstore", "--subscription", "live-events"],
        ["replay", "--dry-run"],
    ],
)
def test_a_bad_mongo_uri_never_shows_its_password(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # One rule for every input path: the sidecar, the event store and replay hide it alike.
    monkeypatch.setenv("LIBERATOR_DATABASE", "shop")
    assert main([*command, "--mongo-uri", "mongodb://app:s3cret@db:notaport/"]) == 2
    err = capsys.readouterr().err
    assert "--mongo-uri: not a valid MongoDB URI" in err
    assert "s3cret" not in err


def test_invalid_value_names_where_it_came_from() -> None:
    with pytest.raises(InvalidValue) as caught:
        validation.percent("150")
    assert caught.value.named("--margin") == (
        "--margin: '150' is not a whole percentage from 1 to 99; use a number such as 25 (a "
        "quarter of the oplog window)"
    )

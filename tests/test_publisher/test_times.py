"""One RFC 3339 form for every record, event and flag, pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from liberator_publisher.core.times import parse_rfc3339, rfc3339


def test_written_in_utc_with_milliseconds_and_z() -> None:
    assert rfc3339(datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)) == "2026-01-02T03:04:05.678Z"
    plus_two = timezone(timedelta(hours=2))
    assert rfc3339(datetime(2026, 1, 2, 5, 4, 5, tzinfo=plus_two)) == "2026-01-02T03:04:05.000Z"
    # Naive is UTC (pymongo without tz_aware), never the machine's local time.
    assert rfc3339(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05.000Z"


def test_read_back_as_aware_utc() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert parse_rfc3339(rfc3339(moment)) == moment
    assert parse_rfc3339("2026-01-02T05:04:05+02:00") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_rfc3339("2026-01-02t03:04:05z") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    "bad", ["2026-01-02", "2026-01-02T03:04:05", "yesterday", "", "2026-13-02T03:04:05Z"]
)
def test_a_time_without_a_zone_or_not_a_time_is_refused_by_name(bad: str) -> None:
    with pytest.raises(
        ValueError,
        match=r"--since: .* is not an RFC 3339 time with a zone; "
        r"write e\.g\. 2026-01-02T03:04:05Z",
    ):
        parse_rfc3339(bad, "--since")

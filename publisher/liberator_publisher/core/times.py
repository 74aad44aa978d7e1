"""RFC 3339 times, as every record, event and flag of Liberator writes and reads them.

Pure. Written in UTC with milliseconds (MongoDB's precision) and ``Z``; a naive datetime is
taken as UTC (what pymongo returns without ``tz_aware``). Read with a ``T`` and a zone (``Z`` or
an offset), never a bare date or a local time.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["now_rfc3339", "parse_rfc3339", "rfc3339"]


def rfc3339(moment: datetime) -> str:
    """``2026-01-02T03:04:05.678Z``."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_rfc3339() -> str:
    return rfc3339(datetime.now(UTC))


def parse_rfc3339(text: str, name: str = "time") -> datetime:
    """An aware UTC datetime; raises ``ValueError`` naming ``name`` for anything else (a date
    alone, a time without a zone), with an example of the right form."""
    value = text.strip()
    moment: datetime | None
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z").replace("t", "T"))
    except ValueError:
        moment = None
    if moment is None or "T" not in value.upper() or moment.tzinfo is None:
        raise ValueError(
            f"{name}: {text!r} is not an RFC 3339 time with a zone; write e.g. 2026-01-02T03:04:05Z"
        )
    return moment.astimezone(UTC)

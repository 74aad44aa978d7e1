"""Encoding: documents to MongoDB relaxed extended JSON, the CloudEvent data format.

The output is deterministic (same document, same bytes): keys keep the document's order, and
bson.json_util renders every BSON type the same way each time (``Decimal128`` as
``{"$numberDecimal": ...}``, ``NaN`` as ``{"$numberDouble": "NaN"}``, datetimes as ISO 8601 UTC,
and so on). Keys holding ``$`` or ``.`` are written as they are.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from typing import Any

from bson import json_util
from bson.binary import UuidRepresentation
from bson.json_util import JSONMode, JSONOptions

from liberator_publisher.core.errors import ReasonedError

__all__ = ["JSON_OPTIONS", "EncodingError", "to_json", "value_to_json"]

JSON_OPTIONS: JSONOptions = JSONOptions(
    json_mode=JSONMode.RELAXED,
    tz_aware=True,
    tzinfo=datetime.UTC,
    # A client configured with uuidRepresentation=standard decodes uuid.UUID; encode it too.
    uuid_representation=UuidRepresentation.STANDARD,
)
"""Relaxed extended JSON, tz-aware UTC datetimes; also what readers should pass to ``loads``."""


class EncodingError(ReasonedError, ValueError):
    """A value that has no extended JSON form; the message says which and why."""


def to_json(value: Mapping[str, Any]) -> str:
    """Render ``value`` as compact relaxed extended JSON, the same string for the same input.

    Raises ``EncodingError`` when a value cannot be encoded (a type BSON does not have, a key that
    is not a string, text that is not valid Unicode, nesting too deep).
    """
    return _dump(value, "the document")


def value_to_json(value: Any) -> str:
    """One value (scalar, list or sub-document) as ``to_json`` renders it inside a document."""
    return _dump(value, "the value")


def _dump(value: Any, what: str) -> str:
    try:
        converted = _convert(value)
        text = json.dumps(
            converted,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,  # NaN and infinities must come out as {"$numberDouble": ...}
        )
    except _UnencodableError as error:
        where = f"{what} at {''.join(reversed(error.path))}" if error.path else what
        raise EncodingError(f"cannot encode {where}: {error.what}") from None
    except RecursionError:
        raise EncodingError(f"cannot encode {what}: it is nested too deeply") from None
    except (TypeError, ValueError, OverflowError) as error:
        raise EncodingError(f"cannot encode {what}: {error}") from None
    try:
        # Pub/Sub data and BSON strings are UTF-8; a lone surrogate cannot be.
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = text[error.start : error.end].encode("unicode_escape").decode("ascii")
        raise EncodingError(
            f"cannot encode {what}: its text holds {bad}, which is not valid Unicode"
        ) from None
    return text


class _UnencodableError(Exception):
    """Raised deep in ``_convert``; each level adds its key on the way out (free if all is well)."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what
        self.path: list[str] = []


def _convert(value: Any) -> Any:
    """Turn BSON values into JSON-ready ones, strictly.

    bson.json_util's own walker turns any iterable into a list; a Python set would then come out
    in hash order, which changes between processes. Only what BSON can hold is accepted here.
    """
    if isinstance(value, str | bool | int | float) or value is None:
        return json_util.default(value, JSON_OPTIONS)  # floats: NaN and infinities
    if isinstance(value, Mapping):
        converted: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _UnencodableError(f"key {key!r} is not a string")
            try:
                converted[key] = _convert(item)
            except _UnencodableError as error:
                error.path.append(f".{key}")
                raise
        return converted
    if isinstance(value, list | tuple):
        items = []
        for index, item in enumerate(value):
            try:
                items.append(_convert(item))
            except _UnencodableError as error:
                error.path.append(f"[{index}]")
                raise
        return items
    if isinstance(value, datetime.datetime) and value.utcoffset():
        # json_util keeps a non-UTC offset; the same instant must give the same text.
        value = value.astimezone(datetime.UTC)
    try:
        return json_util.default(value, JSON_OPTIONS)
    except TypeError:
        what = f"values of type {type(value).__name__} have no BSON form"
        raise _UnencodableError(what) from None

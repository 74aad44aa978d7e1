"""A stand-in "quotes service": writes quotes with plain pymongo at a slow, bounded rate.

``make demo`` runs it in the project image (its python3 has pymongo), mounted from a ConfigMap,
as the ``app`` container of the ``quotes-service`` Deployment; the webhook adds the sidecar. It
knows nothing of Liberator. It serves HTTP on 8080 for its readiness probe, also while MongoDB
is unreachable (its readiness is its own).

Environment:
- ``MONGO_URI`` (required) and ``POD_NAME`` (required; quote ids are ``<POD_NAME>-<n>``);
- ``QUOTES_DATABASE``, default ``quotes`` (the collection is ``quotes``);
- ``QUOTES_INTERVAL_SECONDS``, default 3: the pause between two quotes (0.1 to 3600);
- ``QUOTES_MAX``, default 20: how many quotes this pod writes, then it only serves (0 to 10000).
"""

from __future__ import annotations

import datetime as dt
import http.server
import os
import signal
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any


class ConfigError(ValueError):
    """A missing or malformed variable; the message names it and the fix."""


@dataclass(frozen=True)
class Config:
    mongo_uri: str
    pod: str
    database: str = "quotes"
    interval: float = 3.0
    max_quotes: int = 20


def _number(
    env: Mapping[str, str],
    name: str,
    *,
    default: float,
    low: float,
    high: float,
    kind: type[int] | type[float],
) -> Any:
    raw = env.get(name, "").strip()
    if not raw:
        return kind(default)
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is not a{'n integer' if kind is int else ' number'}: "
            f"set it between {low:g} and {high:g}, or unset it for "
            f"{default:g}"
        ) from None
    if not low <= value <= high:
        raise ConfigError(
            f"{name}={raw!r} is out of range: set it between {low:g} and "
            f"{high:g}, or unset it for {default:g}"
        )
    return value


def load_config(env: Mapping[str, str]) -> Config:
    for name in ("MONGO_URI", "POD_NAME"):
        if not env.get(name, "").strip():
            raise ConfigError(
                f"{name} is not set: give the app's Deployment an env entry "
                f"{name} (examples/quotes_app.py)"
            )
    if not env["MONGO_URI"].startswith(("mongodb://", "mongodb+srv://")):
        raise ConfigError(
            f"MONGO_URI={env['MONGO_URI']!r} is not a MongoDB URI: it starts "
            "with mongodb:// or mongodb+srv://"
        )
    return Config(
        mongo_uri=env["MONGO_URI"],
        pod=env["POD_NAME"],
        database=env.get("QUOTES_DATABASE", "").strip() or "quotes",
        interval=_number(
            env, "QUOTES_INTERVAL_SECONDS", default=3.0, low=0.1, high=3600, kind=float
        ),
        max_quotes=_number(env, "QUOTES_MAX", default=20, low=0, high=10000, kind=int),
    )


def quote(config: Config, n: int) -> dict[str, Any]:
    from bson.decimal128 import Decimal128  # noqa: PLC0415 (pymongo's; load_config needs none)

    return {
        "_id": f"{config.pod}-{n:03d}",
        "version": 1,
        "by": config.pod,
        "customer": f"ACME-{n % 3}",
        "amount": Decimal128(Decimal(1000 + 5 * n)),
        "currency": "EUR",
        "status": "draft",
        "internalNotes": "never published",
        "createdAt": dt.datetime.now(dt.UTC),
    }


def serve(port: int = 8080) -> None:
    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok\n")

        def log_message(self, *args: object) -> None:  # probes every 2 s: keep the log quiet
            pass

    server = http.server.ThreadingHTTPServer(("", port), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()


def main() -> int:
    try:
        config = load_config(os.environ)
    except ConfigError as error:
        print(f"quotes_app: {error}", file=sys.stderr, flush=True)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    serve()
    import pymongo  # noqa: PLC0415

    quotes: Any = pymongo.MongoClient(config.mongo_uri, serverSelectionTimeoutMS=5000)[
        config.database
    ]["quotes"]
    written = 0
    while written < config.max_quotes and not stop.is_set():
        try:
            quotes.insert_one(quote(config, written + 1))
            written += 1
            print(f"inserted quote {config.pod}-{written:03d}", flush=True)
        except pymongo.errors.DuplicateKeyError:  # a restarted container: already written
            written += 1
        except pymongo.errors.PyMongoError as error:
            print(f"insert failed, retrying: {error}", flush=True)
        stop.wait(config.interval)
    print(f"wrote {written} quotes; serving readiness only", flush=True)
    stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())

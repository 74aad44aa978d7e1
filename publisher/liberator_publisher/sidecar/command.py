"""``liberator publish``: configuration, the first connection, the capture origin, then the
runner (runner.py) until SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

from liberator_publisher.core.settings import ConfigError, Settings
from liberator_publisher.runtime import logs
from liberator_publisher.runtime.command import Command
from liberator_publisher.sidecar.runner import (
    CONNECT_TIMEOUT_SECONDS,
    EXIT_CONFIG,
    EXIT_UNREACHABLE,
    Sidecar,
    record_origin,
)
from liberator_publisher.state.checkpoint import (
    CHECKPOINT_COLLECTION,
    Checkpoints,
)

__all__ = ["COMMAND", "main"]


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--exit-on-fatal",
        action="store_true",
        help="exit non-zero on a lost stream position instead of parking alive",
    )
    parser.add_argument(
        "--reset-checkpoint",
        action="store_true",
        help="delete this publisher's checkpoints (after a park and an "
        "EventSeed), then exit; the next start begins at the current "
        "position",
    )


def main(args: argparse.Namespace) -> int:
    """Run the sidecar until SIGTERM; returns the exit code."""
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as error:
        print(f"liberator publish: configuration error: {error}", file=sys.stderr, flush=True)
        return EXIT_CONFIG
    logs.configure(settings.log_level, settings.log_format)
    try:
        mongo = _connect_mongo(settings)
    except _StartError as error:
        print(f"liberator publish: {error}", file=sys.stderr, flush=True)
        return EXIT_UNREACHABLE
    database = mongo[settings.database]
    checkpoints = Checkpoints(database[CHECKPOINT_COLLECTION], settings.publisher)
    if args.reset_checkpoint:
        removed = checkpoints.reset()
        print(
            f"liberator publish: removed {removed} checkpoint(s) of {settings.publisher}; the "
            f"next start captures from the current position",
            file=sys.stderr,
            flush=True,
        )
        mongo.close()
        return 0
    # Before anything else: every write from this moment on is captured, however long this
    # replica then waits for the lease (see checkpoint.py, the origin).
    try:
        record_origin(checkpoints, database)
    except PyMongoError as error:
        print(
            f"liberator publish: LIBERATOR_MONGO_URI: cannot record the capture origin: {error}",
            file=sys.stderr,
            flush=True,
        )
        mongo.close()
        return EXIT_UNREACHABLE
    sidecar = Sidecar(settings, mongo, checkpoints, exit_on_fatal=args.exit_on_fatal)
    try:
        sidecar.start_http()
    except OSError as error:
        print(
            f"liberator publish: LIBERATOR_HTTP_PORT: cannot listen on port "
            f"{settings.http_port}: {error}; choose a free port",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_CONFIG
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, sidecar.on_signal)
    return sidecar.run()


class _StartError(Exception):
    pass


def _connect_mongo(settings: Settings) -> MongoClient[dict[str, Any]]:
    timeout_ms = int(CONNECT_TIMEOUT_SECONDS * 1000)
    try:
        client: MongoClient[dict[str, Any]] = MongoClient(
            settings.mongo_uri,
            tz_aware=True,
            appname="liberator-publish",
            serverSelectionTimeoutMS=timeout_ms,
        )
        client[settings.database].command("ping")
    except OperationFailure as error:
        raise _StartError(
            f"LIBERATOR_MONGO_URI: MongoDB refused the connection: "
            f"{error.details.get('errmsg', error) if error.details else error} "
            f"(code {error.code}); check the user, password and authSource"
        ) from None
    except PyMongoError as error:
        first = str(error).split(",", 1)[0].split("\n", 1)[0]
        raise _StartError(
            f"LIBERATOR_MONGO_URI: cannot reach MongoDB within "
            f"{CONNECT_TIMEOUT_SECONDS:.0f}s ({type(error).__name__}: {first}); "
            f"check the host, port and that the server runs"
        ) from None
    return client


COMMAND = Command("publish", "run the change-data-capture sidecar", _configure, main)

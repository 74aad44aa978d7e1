"""What ``liberator eventstore`` and ``liberator replay`` read alike: where the events are stored
(flags, with the contract's variables as defaults) and how they log.

A wrong value raises ``UsageError`` naming the flag or the variable it came from.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from liberator_publisher.core import validation as rules
from liberator_publisher.runtime import logs
from liberator_publisher.runtime.command import checked, flag_or_env
from liberator_publisher.store.documents import DEFAULT_COLLECTION

__all__ = ["add_events_flags", "configure_logs", "events_location"]


def add_events_flags(parser: argparse.ArgumentParser) -> None:
    """Where the events are stored: the flags the event store and replay share."""
    parser.add_argument(
        "--mongo-uri", default=None, help="MongoDB URI (default $LIBERATOR_MONGO_URI)"
    )
    parser.add_argument(
        "--database",
        default=None,
        help="database of the events collection (default $LIBERATOR_DATABASE)",
    )
    parser.add_argument(
        "--collection",
        default=DEFAULT_COLLECTION,
        help=f"events collection (default {DEFAULT_COLLECTION})",
    )


def events_location(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[str, str, str]:
    """``(mongo_uri, database, collection)`` from the flags of :func:`add_events_flags`, with the
    contract's variables as defaults; ``UsageError`` names the flag or variable."""
    return (
        flag_or_env(args.mongo_uri, env, "LIBERATOR_MONGO_URI", "--mongo-uri", rules.mongo_uri),
        flag_or_env(args.database, env, "LIBERATOR_DATABASE", "--database", rules.database_name),
        checked(rules.collection_name, args.collection, "--collection"),
    )


def configure_logs(env: Mapping[str, str]) -> None:
    """Set up logging from LIBERATOR_LOG_LEVEL and LIBERATOR_LOG_FORMAT; ``UsageError``."""
    level = checked(
        rules.log_level, env.get("LIBERATOR_LOG_LEVEL", "").strip() or "INFO", "LIBERATOR_LOG_LEVEL"
    )
    kind = checked(
        rules.log_format,
        env.get("LIBERATOR_LOG_FORMAT", "").strip() or "text",
        "LIBERATOR_LOG_FORMAT",
    )
    logs.configure(level, kind)

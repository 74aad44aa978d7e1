"""``liberator seed``: the flags and the variables into a seed run (seeder.py), and its exit code:
0 done (even with skipped or failed documents), 2 usage or configuration error, 1 fatal."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping

from liberator_publisher.core import validation as rules
from liberator_publisher.core.settings import Settings
from liberator_publisher.core.validation import InvalidValue
from liberator_publisher.runtime import logs
from liberator_publisher.runtime.command import Command, UsageError
from liberator_publisher.seed.ledger import LedgerError
from liberator_publisher.seed.options import MODES, SEED_ID, SeedOptions, parse_filter
from liberator_publisher.seed.seeder import run_seed

__all__ = ["COMMAND", "configure", "run"]

log = logging.getLogger("liberator_publisher.seed.seeder")


def _positive_int(flag: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.strip().isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(
                f"{flag} must be a whole number of 1 or more, not {text!r}"
            )
        return int(text)

    return parse


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"--rate-limit must be documents per second (0 for no limit), not {text!r}"
        )
    return value


def _topic(text: str) -> str:
    try:
        return rules.topic_id(text)
    except InvalidValue as invalid:
        raise argparse.ArgumentTypeError(invalid.named("--topic")) from None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--topic", required=True, type=_topic, help="seed topic id (in LIBERATOR_PUBSUB_PROJECT)"
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="latest",
        help="latest: one event per entity; history: every version document",
    )
    parser.add_argument(
        "--filter", default="{}", help="MongoDB query in relaxed extended JSON (default {})"
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int("--batch-size"),
        default=500,
        help="documents per batch (default 500)",
    )
    parser.add_argument(
        "--rate-limit",
        type=_rate,
        default=0.0,
        help="documents per second, 0 = unlimited (default)",
    )
    parser.add_argument(
        "--allow-empty",
        action="store_true",
        help="succeed with nothing to seed when the collection does not exist "
        "(default: refuse, it is most often a typo)",
    )
    parser.add_argument(
        "--seed-id",
        default=None,
        help="keys the ledger and checkpoint (default: $LIBERATOR_SEED or 'manual')",
    )


def _settings(env: Mapping[str, str], topic: str) -> Settings:
    # The seed needs no live topic; the contract's parser wants one, so give it the seed topic.
    return Settings.from_env({**env, "LIBERATOR_TOPIC": topic})


def run(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    settings = _settings(env, args.topic)  # a ConfigError is a UsageError: exit 2 (cli.py)
    logs.configure(settings.log_level, settings.log_format)
    try:
        seed_id = args.seed_id or env.get("LIBERATOR_SEED", "").strip() or "manual"
        if not args.seed_id and env.get("LIBERATOR_SEED") and not SEED_ID.fullmatch(seed_id):
            raise UsageError(
                f"LIBERATOR_SEED: {seed_id!r} is not <namespace>/<name> of an "
                "EventSeed; fix it or pass --seed-id"
            )
        options = SeedOptions(
            topic=args.topic,
            mode=args.mode,
            filter=parse_filter(args.filter),
            batch_size=args.batch_size,
            rate_limit=args.rate_limit,
            seed_id=seed_id,
            allow_empty=args.allow_empty,
        )
        summary = run_seed(settings, options)
    except UsageError:
        raise
    except LedgerError as error:
        print(f"liberator seed: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        log.exception("seed failed")
        print(f"liberator seed: failed: {error}", file=sys.stderr)
        return 1
    print(summary.line(), flush=True)
    return 0


COMMAND = Command(
    name="seed",
    help="publish every existing entity once to the seed topic",
    configure=configure,
    run=run,
)

"""The command line of ``python -m bench``: its flags, and the sizes it refuses."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["PHASES", "check", "parser", "sizes"]

PHASES = ("baselines", "oplog", "e2e", "latency", "failover")


def sizes(text: str) -> list[int]:
    """``10000,100000``: at least one whole number of oplog entries, each at least 1."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"must be oplog lengths separated by commas, such as 10000,100000, not {text!r}"
        )
    return values


def parser(description: str) -> argparse.ArgumentParser:
    """The flags in the order ``--help`` lists them: output and phases, sizes, the late phases."""
    p = argparse.ArgumentParser(prog="python -m bench", description=description)
    _output_and_phases(p)
    _sizes(p)
    _latency_and_failover(p)
    return p


def _output_and_phases(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="record the sidecar with py-spy (if installed) into DIR: idle.txt and "
        "load.txt, collapsed stacks",
    )
    p.add_argument(
        "--skip", action="append", default=[], choices=PHASES, help="leave a phase out (repeatable)"
    )
    p.add_argument(
        "--only",
        action="append",
        default=[],
        choices=PHASES,
        help="run only this phase (repeatable), e.g. --only oplog",
    )


def _sizes(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--baseline-docs",
        type=int,
        default=5000,
        help="documents for B_ins and B_watch, messages for B_pub (default 5000)",
    )
    p.add_argument(
        "--oplog-sizes",
        type=sizes,
        default=[10_000, 100_000],
        metavar="N,N",
        help="oplog lengths at which the oplog phase times an empty getMore and a "
        "find_one by _id (default 10000,100000)",
    )
    p.add_argument(
        "--oplog-ops",
        type=int,
        default=300,
        help="operations of each kind timed at each oplog length (default 300)",
    )
    p.add_argument(
        "--events",
        type=int,
        default=3000,
        help="events of the end-to-end throughput run (default 3000)",
    )
    p.add_argument(
        "--entities",
        type=int,
        default=100,
        help="distinct entity ids (ordering keys) in B_pub and the throughput run (default 100)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=100,
        help="events pushed through a sidecar before it is measured (default 100)",
    )
    p.add_argument(
        "--idle-seconds", type=float, default=20.0, help="how long idle CPU is sampled (default 20)"
    )


def _latency_and_failover(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--latency-seconds",
        type=float,
        default=15.0,
        help="duration of the paced run at half the measured maximum (default 15)",
    )
    p.add_argument(
        "--latency-rate",
        type=float,
        default=0.0,
        help="events/s of the latency run (default: half the end-to-end rate)",
    )
    p.add_argument("--failover-ttl", type=int, default=3, help="lease TTL in s (default 3)")
    p.add_argument(
        "--failover-rate",
        type=float,
        default=50.0,
        help="steady insert rate during failover, events/s (default 50)",
    )
    p.add_argument(
        "--failover-before",
        type=float,
        default=5.0,
        help="seconds of load before the leader is killed (default 5)",
    )
    p.add_argument(
        "--failover-after",
        type=float,
        default=8.0,
        help="seconds of load after the standby took over (default 8)",
    )


def check(args: argparse.Namespace) -> None:
    """Refuse sizes that cannot give a figure, naming the flag."""
    for flag in ("baseline_docs", "oplog_ops", "events", "entities", "warmup", "failover_ttl"):
        if getattr(args, flag) < 1:
            raise SystemExit(
                f"python -m bench: --{flag.replace('_', '-')} must be at least 1, "
                f"not {getattr(args, flag)}"
            )
    for flag in (
        "idle_seconds",
        "latency_seconds",
        "failover_rate",
        "failover_before",
        "failover_after",
    ):
        if getattr(args, flag) <= 0:
            raise SystemExit(
                f"python -m bench: --{flag.replace('_', '-')} must be positive, "
                f"not {getattr(args, flag)}"
            )
    if args.latency_rate < 0:
        raise SystemExit(
            f"python -m bench: --latency-rate must be positive (or 0 for half the "
            f"measured maximum), not {args.latency_rate}"
        )

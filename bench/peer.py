"""Liberator beside Debezium Server: same stack, same N, same measure (``python -m bench.peer``).

Starts the local stack as ``python -m bench`` does (Pub/Sub emulator, Redis, a fresh MongoDB
stand-in for each system), fetches Debezium Server once (bench/debezium.py), and runs the same
steps for Liberator (``liberator publish``) and for Debezium Server with Pub/Sub ordering on and
off:

1. start the publisher; insert a probe a second until one is pulled (its stream is open);
2. warm up (``--warmup`` events), then sample idle RSS and CPU from ``/proc``;
3. end to end: insert N as fast as ``insert_many`` goes; time from the first insert to the N-th
   distinct message pulled from a subscription (bench/pull.py);
4. backlog drain: stop the publisher, insert N, start it again; time from the start to the N-th
   distinct message pulled.

A run in which events stop arriving (or the publisher exits) is reported as FAILED with the
count reached, never left out. Prints one table: Liberator, Debezium, and Liberator ÷ Debezium.
The steps are bench/measure.py's, the publishers under test bench/subjects.py's, and the figures
and their table bench/figures.py's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack"))

from bench import debezium  # noqa: E402
from bench.figures import Figures, failures, table  # noqa: E402
from bench.load import Load  # noqa: E402
from bench.measure import measure  # noqa: E402
from bench.pull import Puller  # noqa: E402
from bench.report import machine  # noqa: E402
from bench.run import Run, running  # noqa: E402
from bench.sidecar import SidecarEnv  # noqa: E402
from bench.subjects import Debezium, Liberator  # noqa: E402

__all__ = ["Figures", "failures", "main", "table"]

COLLECTION = "quotes"
PROG = "python -m bench.peer"


def create_topic(project: str, topic: str) -> None:
    from google.cloud import pubsub_v1  # noqa: PLC0415  (grpc: import only when needed)

    client = pubsub_v1.PublisherClient()
    client.create_topic(name=client.topic_path(project, topic))


@contextlib.contextmanager
def subscription(project: str, topic: str, name: str) -> Iterator[Puller]:
    puller = Puller(project, topic, name)
    try:
        yield puller
    finally:
        puller.close()


def run_liberator(run: Run, args: argparse.Namespace) -> Figures:
    fig = Figures("Liberator")
    uri = run.fresh_mongo()
    database = run.database("peerlib")
    setup = SidecarEnv(dict(run.exports), database, f"peer-lib-{run.tag}", run.stack.run_dir)
    project = run.exports["LIBERATOR_PUBSUB_PROJECT"]
    load = Load(_client(uri), database)
    try:
        setup.create_topic()
        with subscription(project, setup.topic, f"peer-lib-{run.tag}") as puller:
            measure(fig, Liberator(setup), load, puller, args=args, servers=servers(run))
    finally:
        setup.stop()
        load.db.client.close()
    return fig


def run_debezium(run: Run, args: argparse.Namespace, ordering: bool) -> Figures:
    label = "on" if ordering else "off"
    fig = Figures(f"Debezium (ordering {label})")
    uri = run.fresh_mongo()
    database = run.database(f"peerdbz{label}")
    project = run.exports["LIBERATOR_PUBSUB_PROJECT"]
    folder = Path(tempfile.mkdtemp(prefix=f"debezium-{label}-", dir=run.stack.run_dir))
    server = debezium.DebeziumServer(
        folder=folder,
        java=args.java,
        mongo_uri=uri,
        database=database,
        collection=COLLECTION,
        project=project,
        emulator=run.exports["PUBSUB_EMULATOR_HOST"],
        ordering=ordering,
    )
    load = Load(_client(uri), database)
    try:
        create_topic(project, server.topic)  # the sink exits on NOT_FOUND
        with subscription(project, server.topic, f"peer-dbz-{label}-{run.tag}") as puller:
            measure(fig, Debezium(server), load, puller, args=args, servers=servers(run))
    finally:
        server.stop()
        load.db.client.close()
    return fig


def _client(uri: str) -> Any:
    from pymongo import MongoClient  # noqa: PLC0415

    return MongoClient(uri)


def servers(run: Run) -> dict[str, int]:
    names = {"mongo": "stand-in", "pubsub": "pubsub"}
    return {names[name]: pid for name, pid in run.server_pids().items() if name in names}


# -- the command line --


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument(
        "--events",
        type=int,
        default=3000,
        help="N: events of the end-to-end and of the backlog step (default 3000)",
    )
    p.add_argument(
        "--entities",
        type=int,
        default=100,
        help="distinct entity ids (Liberator's ordering keys) in the load (default 100)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=100,
        help="events through each publisher before it is measured (default 100)",
    )
    p.add_argument(
        "--idle-seconds", type=float, default=20.0, help="how long idle CPU is sampled (default 20)"
    )
    p.add_argument(
        "--stall-seconds",
        type=float,
        default=60.0,
        help="a step with no new event for this long has failed (default 60)",
    )
    p.add_argument(
        "--ordering",
        choices=("both", "on", "off"),
        default="both",
        help="Debezium's Pub/Sub ordering: run it on, off, or both (default both)",
    )
    p.add_argument(
        "--no-liberator",
        action="store_true",
        help="run Debezium only (the ratio columns then read '-')",
    )
    p.add_argument(
        "--java",
        type=Path,
        default=debezium.DEFAULT_JAVA,
        help=f"Java 21+ for Debezium Server (default {debezium.DEFAULT_JAVA})",
    )
    return p


def check(args: argparse.Namespace) -> None:
    """Refuse what cannot give a figure, naming the flag, before anything is fetched or run."""
    for flag in ("events", "entities", "warmup"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"{PROG}: --{flag} must be at least 1, not {getattr(args, flag)}")
    for flag in ("idle_seconds", "stall_seconds"):
        if not getattr(args, flag) > 0:
            raise SystemExit(
                f"{PROG}: --{flag.replace('_', '-')} must be positive, not {getattr(args, flag)}"
            )
    problem = debezium.java_problem(args.java)
    if problem:
        raise SystemExit(
            f"{PROG}: --java: {problem}; give a Java 21+ binary, e.g. "
            f"--java {debezium.DEFAULT_JAVA}"
        )


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally: all processes stop


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    check(args)
    signal.signal(signal.SIGTERM, _terminate)
    info = machine()
    started = time.monotonic()
    debezium.fetch()
    figs: list[Figures] = []
    with running("liberator-peer-", args) as run:
        if not args.no_liberator:
            figs.append(run_liberator(run, args))
        for ordering in {"both": (True, False), "on": (True,), "off": (False,)}[args.ordering]:
            figs.append(run_debezium(run, args, ordering))
    if args.no_liberator:
        figs.insert(0, Figures("Liberator", ran=False))
    info["loadavg_end"] = os.getloadavg()
    info["seconds"] = round(time.monotonic() - started, 1)
    info["debezium"] = debezium.VERSION
    text = table(figs, args.events)
    if args.json:
        print(
            json.dumps(
                {
                    "machine": info,
                    "table": text,
                    "figures": [asdict(f) for f in figs],
                    "args": vars(args),
                },
                indent=2,
                default=str,
            )
        )
    else:
        print(text)
        if any(f.errors for f in figs):
            print(f"\nfailed runs:\n{failures(figs)}")
        print(
            f"\nratio = Liberator ÷ Debezium on every row: above 1 is better for events/s, "
            f"below 1 for seconds, RSS and CPU. machine: {info['cpus']} CPUs ({info['cpu']}), "
            f"load average {info['loadavg_start'][0]:.2f} at start, "
            f"{info['loadavg_end'][0]:.2f} at end; Debezium Server {debezium.VERSION}; "
            f"{info['seconds']:.0f} s"
        )
    return 0  # a failed or slower run is a finding in the table, not a failure of the command


if __name__ == "__main__":
    sys.exit(main())

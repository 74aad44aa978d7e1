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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack"))

from bench import debezium  # noqa: E402
from bench.__main__ import Run, machine  # noqa: E402
from bench.baselines import quote  # noqa: E402
from bench.publisher import Load, Sidecar, SidecarEnv, cpu_seconds, poll, rss_bytes  # noqa: E402
from bench.pull import Puller, StalledError  # noqa: E402
from liberator_stack import Stack  # noqa: E402

MIB = 1024 * 1024
PROBE = 10**9
"""``seq`` of the readiness probes, far from the measured events."""
COLLECTION = "quotes"
PROG = "python -m bench.peer"


def say(message: str) -> None:
    print(f"[peer] {message}", file=sys.stderr, flush=True)


class Subject(Protocol):
    """A publisher under test: a process that can be started, stopped and watched."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def pid(self) -> int: ...
    def alive(self) -> None:
        """Raise when the process has exited."""


class Liberator:
    """``liberator publish`` (one replica) through bench/publisher.py's sidecar helpers."""

    def __init__(self, setup: SidecarEnv) -> None:
        self.setup = setup
        self.car: Sidecar | None = None

    def start(self) -> None:
        self.car = self.setup.sidecar()
        car = self.car
        poll(car.is_leader, what="the sidecar takes the lease", deadline=120)

    def stop(self) -> None:
        if self.car is not None:
            self.car.stop()

    def pid(self) -> int:
        assert self.car is not None
        return self.car.pid

    def alive(self) -> None:
        if self.car is None or not self.car.alive():
            log = self.car.log.read_text(errors="replace")[-2000:] if self.car else ""
            raise RuntimeError(f"liberator publish exited:\n{log}")


class Debezium:
    """Debezium Server, restarted on the same folder (and so the same offsets)."""

    def __init__(self, server: debezium.DebeziumServer) -> None:
        self.server = server

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        if self.server.runs:
            self.server.current.stop(timeout=60)

    def pid(self) -> int:
        return self.server.current.pid

    def alive(self) -> None:
        self.server.check_alive()


@dataclass
class Figures:
    """What one system measured. A field left None was not measured (see ``errors``)."""

    system: str
    ran: bool = True
    """False when left out by a flag (its cells read "not run")."""
    loadavg: float = 0.0
    """1-minute load average when this system's run began."""
    e2e_seconds: float | None = None
    """First insert to the N-th distinct message pulled."""
    drain_seconds: float | None = None
    """Publisher start to the N-th distinct message pulled, N written while it was stopped."""
    drain_first: float | None = None
    """Publisher start to the first of the backlog pulled."""
    drain_after_first: float | None = None
    """The first of the backlog pulled to the last: the drain without the start-up."""
    idle_rss: int | None = None
    idle_millicores: float | None = None
    peak_rss: int | None = None
    """Highest VmRSS sampled from the first insert of the e2e step to the end of the drain."""
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds of each process during the end-to-end step."""
    duplicates: int = 0
    """Messages pulled more than once (redeliveries or republished events)."""
    errors: dict[str, str] = field(default_factory=dict)
    """step -> why it failed."""
    sample: str = ""
    """The first message's data (from Debezium's ``payload``), cut short; ``--json`` shows it."""


class Sampler:
    """Peak VmRSS of whatever process ``pid()`` names now, every 0.2 s."""

    def __init__(self, pid: Callable[[], int]) -> None:
        self.peak = 0
        self._pid = pid
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._done.wait(0.2):
            with contextlib.suppress(Exception):  # between two runs there is no process
                self.peak = max(self.peak, rss_bytes(self._pid()))

    def close(self) -> int:
        self._done.set()
        self._thread.join()
        return self.peak


def create_topic(project: str, topic: str) -> None:
    from google.cloud import pubsub_v1  # noqa: PLC0415  (grpc: import only when needed)

    client = pubsub_v1.PublisherClient()
    client.create_topic(name=client.topic_path(project, topic))


def wait_ready(subject: Subject, load: Load, puller: Puller, deadline: float = 180) -> None:
    """Insert one probe a second until one is pulled: the publisher's stream is open.

    Neither system captures what was written before its first stream opened (Liberator's
    first start and Debezium's ``snapshot.mode=no_data`` both begin at "now").
    """
    end = time.monotonic() + deadline
    for i in range(int(deadline) + 1):
        subject.alive()
        load.entities.insert_one(quote(PROBE + i))
        if any(PROBE <= seq < PROBE + i + 1 for seq in list(puller.seen)):
            return
        if time.monotonic() > end:
            break
        time.sleep(1.0)
    raise StalledError(f"no probe event pulled within {deadline:.0f} s of the start")


def measure(
    fig: Figures,
    subject: Subject,
    load: Load,
    puller: Puller,
    *,
    args: argparse.Namespace,
    servers: dict[str, int],
) -> None:
    """Steps 1-4 of the module docstring; a failed step ends the run, its error kept."""
    n, w, entities = args.events, args.warmup, args.entities
    deadline = max(300.0, n / 10)
    fig.loadavg = os.getloadavg()[0]
    step = "start"
    expected = (PROBE, 1)  # the events the current step waits for: (first seq, count)
    sampler: Sampler | None = None
    try:
        subject.start()
        wait_ready(subject, load, puller)
        step, expected = "warm-up", (0, w)
        load.insert(0, w, entities)
        puller.wait(0, w, deadline=deadline, stall=args.stall_seconds, alive=subject.alive)
        time.sleep(3.0)  # let the last acks and offsets settle
        step = "idle"
        pid = subject.pid()
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(args.idle_seconds)
        fig.idle_millicores = 1000.0 * (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        fig.idle_rss = rss_bytes(pid)
        say(
            f"{fig.system}: idle RSS {fig.idle_rss / MIB:.0f} MiB, "
            f"CPU {fig.idle_millicores:.1f} mcores"
        )

        step, expected = "e2e", (w, n)
        sampler = Sampler(subject.pid)
        pids = {"process": pid, **servers}
        before = {name: cpu_seconds(p) for name, p in pids.items()}
        start = time.time()
        load.insert(w, n, entities)
        arrived = puller.wait(
            w, n, deadline=deadline, stall=args.stall_seconds, alive=subject.alive
        )
        fig.cpu = {name: round(cpu_seconds(p) - before[name], 2) for name, p in pids.items()}
        fig.e2e_seconds = arrived.last_at - start
        say(
            f"{fig.system}: end to end {n / fig.e2e_seconds:,.0f} events/s "
            f"({fig.e2e_seconds:.1f} s), CPU s {fig.cpu}"
        )

        step, expected = "drain", (w + n, n)
        subject.stop()
        load.insert(w + n, n, entities)
        start = time.time()
        subject.start()
        arrived = puller.wait(
            w + n, n, deadline=deadline, stall=args.stall_seconds, alive=subject.alive
        )
        fig.drain_seconds = arrived.last_at - start
        fig.drain_first = arrived.first_at - start
        fig.drain_after_first = arrived.last_at - arrived.first_at
        say(
            f"{fig.system}: backlog of {n} drained in {fig.drain_seconds:.1f} s "
            f"(first after {fig.drain_first:.1f} s)"
        )
    except Exception as error:  # the table shows the failed step; the other systems still run
        got = puller.count(*expected) if step != "start" else 0
        reason = f"{type(error).__name__}: {error}".splitlines()[0][:160]
        fig.errors[step] = f"{reason} [{got} of {expected[1]} events of this step pulled]"
        say(f"{fig.system}: {step} failed: {error}")
        if not isinstance(error, StalledError | RuntimeError):
            traceback.print_exc()
    finally:
        if sampler is not None:
            fig.peak_rss = sampler.close() or None
        fig.duplicates = puller.messages - len(puller.seen)
        data = puller.sample or b""
        fig.sample = data[max(0, data.find(b'"payload"')) :][:600].decode(errors="replace")
        subject.stop()


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


# -- the table --


def _rate(n: int, seconds: float | None) -> float | None:
    return n / seconds if seconds else None


def _cell(value: float | None, unit: str, fmt: str, fig: Figures) -> str:
    if value is not None:
        return f"{value:{fmt}} {unit}".rstrip()
    if not fig.ran:
        return "not run"
    failed = next(iter(fig.errors), None)  # the step that ended the run (reasons below)
    return f"FAILED ({failed})" if failed else "-"


def rows(figs: list[Figures], n: int) -> list[tuple[str, list[tuple[float | None, str]]]]:
    """(metric, [(value, text) per system]); the value feeds the ratio."""
    out: list[tuple[str, list[tuple[float | None, str]]]] = []

    def add(metric: str, get: Callable[[Figures], float | None], unit: str, fmt: str) -> None:
        out.append((metric, [(get(f), _cell(get(f), unit, fmt, f)) for f in figs]))

    add(
        f"e2e events/s, N={n:,} (1st insert to N-th pulled)",
        lambda f: _rate(n, f.e2e_seconds),
        "",
        ",.0f",
    )
    add("e2e seconds", lambda f: f.e2e_seconds, "s", ".1f")
    add(
        f"backlog drain events/s, N={n:,} (start to N-th pulled)",
        lambda f: _rate(n, f.drain_seconds),
        "",
        ",.0f",
    )
    add("backlog: start to 1st event pulled", lambda f: f.drain_first, "s", ".1f")
    add(
        "backlog events/s after the 1st (start-up left out)",
        lambda f: _rate(n - 1, f.drain_after_first),
        "",
        ",.0f",
    )
    add("idle RSS", lambda f: f.idle_rss and f.idle_rss / MIB, "MiB", ".0f")
    add("peak RSS (e2e and drain)", lambda f: f.peak_rss and f.peak_rss / MIB, "MiB", ".0f")
    add("idle CPU", lambda f: f.idle_millicores, "mcores", ".1f")
    add(f"process CPU for the {n:,} e2e events", lambda f: f.cpu.get("process"), "s", ".2f")
    add("MongoDB stand-in CPU, same span", lambda f: f.cpu.get("stand-in"), "s", ".2f")
    add("Pub/Sub emulator CPU, same span", lambda f: f.cpu.get("pubsub"), "s", ".2f")
    out.append(
        (
            "messages pulled more than once",
            [(None, str(f.duplicates) if f.ran else "not run") for f in figs],
        )
    )
    out.append(
        (
            "load average (1 min) as its run began",
            [(None, f"{f.loadavg:.2f}" if f.ran else "not run") for f in figs],
        )
    )
    return out


def table(figs: list[Figures], n: int) -> str:
    """Liberator, then each Debezium run followed by Liberator ÷ that run."""
    head = ["metric", figs[0].system]
    for fig in figs[1:]:
        head += [fig.system, "ratio"]
    lines = [head]
    for metric, cells in rows(figs, n):
        line = [metric, cells[0][1]]
        mine = cells[0][0]
        for value, text in cells[1:]:
            line += [text, f"{mine / value:.2f}" if mine is not None and value else "-"]
        lines.append(line)
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    out = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in lines
    ]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def failures(figs: list[Figures]) -> str:
    return "\n".join(f"- {f.system}, {step}: {why}" for f in figs for step, why in f.errors.items())


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
    real = os.environ.get("LIBERATOR_TEST_MONGO_URI") or None
    figs: list[Figures] = []
    with Stack(Path(tempfile.mkdtemp(prefix="liberator-peer-"))) as stack:
        stack.up(("pubsub", "redis"))
        if not real:
            stack.build(("mongo",))
        os.environ.update(stack.exports())  # PUBSUB_EMULATOR_HOST for this process's clients
        run = Run(stack, real, args)
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

"""The data-plane benchmarks of docs/targets.md in one run: ``python -m bench [--json] [...]``.

Starts the local stack (MongoDB emulator, Pub/Sub emulator, Redis) from hack/liberator_stack,
measures the raw baselines B_ins, B_watch and B_pub, then runs ``liberator publish`` as a
subprocess for end-to-end throughput, latency at half load, RSS, idle CPU and failover, and
prints one table.

Every phase that writes to MongoDB gets a fresh stand-in (a new, empty H2 file), so one phase's
writes (a bigger heap, a bigger H2 file) do not weigh on the next. The ``oplog`` phase checks that
a change-stream ``getMore`` and a look-up by ``_id`` cost the same at 10k and 100k oplog entries.
``LIBERATOR_TEST_MONGO_URI`` runs against a real MongoDB instead (a fresh database per phase).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack"))

from pymongo import MongoClient  # noqa: E402

from bench import publisher as pub  # noqa: E402
from bench.baselines import (  # noqa: E402
    OplogCost,
    Rate,
    b_idle,
    b_ins,
    b_pub,
    b_watch,
    fill_oplog,
    oplog_cost,
    quote,
)
from liberator_stack import Stack  # noqa: E402

MIB = 1024 * 1024
_T = TypeVar("_T")
PHASES = ("baselines", "oplog", "e2e", "latency", "failover")
CLOSE = 2.0
"""The oplog phase's bound: a figure at the largest oplog within this factor of the smallest's."""


LEADER_IDLE_MIB = 80
LOAD_GROWTH_MIB = 30
STANDBY_MIB = 60
"""The RSS targets of docs/targets.md."""


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    metric: str
    """What was measured."""
    value: str
    """The figure with its unit."""
    target: str
    """The target of docs/targets.md, or ``-`` for a baseline."""
    ratio: str
    """Figure over target (or over its bound), where that means something."""
    verdict: str
    """``met``, ``MISSED`` or ``info``."""


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


class Run:
    """One benchmark run on one stack: fresh MongoDB per phase, figures collected as rows."""

    def __init__(self, stack: Stack, real_mongo: str | None, args: argparse.Namespace) -> None:
        self.stack = stack
        self.real_mongo = real_mongo
        self.args = args
        self.exports = stack.exports()
        self.rows: list[Row] = []
        self.raw: dict[str, Any] = {}
        self.tag = uuid.uuid4().hex[:8]

    def say(self, message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    def fresh_mongo(self) -> str:
        """A MongoDB with an empty oplog (the emulator restarted on a new file)."""
        if self.real_mongo:
            uri = self.real_mongo
        else:
            if "mongo" in self.stack.servers:
                self.stack.stop("mongo")
                shutil.rmtree(self.stack.run_dir / "mongo", ignore_errors=True)
            uri = self.stack.start("mongo").exports["LIBERATOR_MONGO_URI"]
        self.exports["LIBERATOR_MONGO_URI"] = uri
        client: MongoClient[dict[str, Any]] = MongoClient(uri)
        # The same small warm-up on every fresh server: the JVM's first writes are slow.
        client[f"warm{self.tag}"]["warm"].insert_many([quote(i) for i in range(500)])
        client.close()
        return uri

    def server_pids(self) -> dict[str, int]:
        return {name: server.procs[0].pid for name, server in self.stack.servers.items()}

    def database(self, name: str) -> str:
        return f"bench{name}{self.tag}"

    def add(self, *row: str) -> None:
        self.rows.append(Row(*row))

    # -- phases --

    def phase(self, name: str, body: Callable[[], _T]) -> _T | None:
        """Run one phase unless skipped; a failure becomes a row, and the other phases go on."""
        if name in self.args.skip or (self.args.only and name not in self.args.only):
            return None
        try:
            return body()
        except Exception as error:  # the table still shows the other figures
            self.say(f"{name} failed: {error!r}")
            self.add(f"{name} phase", "FAILED", "-", "-", f"error: {str(error)[:120]}")
            self.raw.setdefault("errors", {})[name] = repr(error)
            return None

    def baselines(self) -> tuple[Rate, Rate, Rate]:
        n = self.args.baseline_docs
        uri = self.fresh_mongo()
        with MongoClient[dict[str, Any]](uri) as client:
            ins = b_ins(client, self.database("ins"), n)
        self.say(f"B_ins {ins.per_second:,.0f} docs/s")
        uri = self.fresh_mongo()
        with MongoClient[dict[str, Any]](uri) as client:
            watch = b_watch(client, self.database("watch"), n)
            poll = b_idle(client, self.database("idle"), min(10.0, self.args.idle_seconds))
        self.say(f"B_watch {watch.per_second:,.0f} events/s")
        bpub = b_pub(
            self.exports["LIBERATOR_PUBSUB_PROJECT"], f"bench-pub-{self.tag}", n, self.args.entities
        )
        self.say(f"B_pub {bpub.per_second:,.0f} msgs/s")
        self.raw["baselines"] = {
            "B_ins": asdict(ins),
            "B_watch": asdict(watch),
            "B_pub": asdict(bpub),
            "idle_poll": asdict(poll),
        }
        self.add("B_ins (raw insert_many)", f"{ins.per_second:,.0f} docs/s", "-", "-", "info")
        self.add("B_watch (raw watch drain)", f"{watch.per_second:,.0f} events/s", "-", "-", "info")
        self.add("B_pub (raw batched publish)", f"{bpub.per_second:,.0f} msgs/s", "-", "-", "info")
        self.add(
            "raw idle poll of 2 quiet streams (pymongo)",
            f"{poll.millicores:.0f} mcores",
            "-",
            f"{poll.getmores_per_second:,.0f} getMore/s",
            "info",
        )
        return ins, watch, bpub

    def oplog(self) -> None:
        """Empty getMore and find_one by _id at each ``--oplog-sizes`` length, one fresh server."""
        a = self.args
        uri = self.fresh_mongo()
        database = self.database("oplog")
        costs: list[OplogCost] = []
        with MongoClient[dict[str, Any]](uri) as client:
            for size in sorted(a.oplog_sizes):
                started = time.monotonic()
                documents = fill_oplog(client, database, size)
                self.say(f"oplog filled to {size:,} entries in {time.monotonic() - started:.0f} s")
                cost = oplog_cost(client, database, documents, a.oplog_ops)
                self.say(
                    f"oplog {cost.oplog}: getMore {cost.getmore_mean * 1000:.2f} ms, "
                    f"find_one {cost.lookup_mean * 1000:.2f} ms"
                )
                costs.append(cost)
        self.raw["oplog"] = [asdict(c) for c in costs]
        first = costs[0]
        for cost in costs:
            length = f"{cost.oplog:,}" if cost.oplog is not None else "?"
            for what, mean, base in (
                ("empty getMore", cost.getmore_mean, first.getmore_mean),
                ("find_one by _id", cost.lookup_mean, first.lookup_mean),
            ):
                where = f"{what}, oplog {length} (mean of {cost.ops})"
                if cost is first:
                    self.add(where, f"{mean * 1000:.2f} ms", "-", "-", "info")
                else:
                    ratio = mean / base if base > 0 else float("inf")
                    self.add(
                        where,
                        f"{mean * 1000:.2f} ms",
                        f"<= {CLOSE:g} x first size",
                        f"{ratio:.2f}",
                        verdict(ratio <= CLOSE),
                    )

    def setup(self, name: str, lease_ttl: int = 10) -> tuple[pub.SidecarEnv, pub.Load]:
        uri = self.fresh_mongo()
        setup = pub.SidecarEnv(
            dict(self.exports),
            self.database(name),
            f"bench-{name}-{self.tag}",
            self.stack.run_dir,
            lease_ttl=lease_ttl,
        )
        setup.create_topic()
        return setup, pub.Load(MongoClient(uri), setup.database)

    def e2e(self, base: tuple[Rate, Rate, Rate] | None) -> float:
        a = self.args
        setup, load = self.setup("e2e")
        try:
            car, idle = pub.idle(setup, load, a.warmup, a.idle_seconds, profile=a.profile)
            self.say(f"idle: RSS {idle.rss / MIB:.1f} MiB, CPU {idle.millicores:.1f} mcores")
            run = pub.end_to_end(
                car,
                load,
                first=a.warmup,
                count=a.events,
                entities=a.entities,
                deadline=max(300.0, a.events / 10),
                servers=self.server_pids(),
                profile=a.profile,
            )
        finally:
            setup.stop()
            load.db.client.close()
        self.say(
            f"end to end {run.per_second:,.0f} events/s, k={run.writes_per_event}, "
            f"{run.seconds:.1f} s, CPU s {run.cpu}"
        )
        self.raw["idle"] = asdict(idle)
        self.raw["e2e"] = {**asdict(run), "per_second": run.per_second}
        k = run.writes_per_event if run.writes_per_event is not None else 3.0
        self.add(
            "k (Mongo writes per event)",
            f"{k:.3f}",
            "-",
            "-",
            "info" if run.writes_per_event is not None else "info (assumed)",
        )
        if base is not None:
            ins, watch, bpub = base
            bound = min(watch.per_second, bpub.per_second, ins.per_second / k)
            self.raw["bound"] = bound
            which = {
                watch.per_second: "B_watch",
                bpub.per_second: "B_pub",
                ins.per_second / k: "B_ins/k",
            }[bound]
            self.add(
                f"min(B_watch, B_pub, B_ins/k) = {which}",
                f"{bound:,.0f} events/s",
                "-",
                "-",
                "info",
            )
            ratio = run.per_second / bound
            self.add(
                "end-to-end insert to publish ack",
                f"{run.per_second:,.0f} events/s",
                ">= 0.7 x bound",
                f"{ratio:.2f}",
                verdict(ratio >= 0.7),
            )
        else:
            self.add(
                "end-to-end insert to publish ack",
                f"{run.per_second:,.0f} events/s",
                ">= 0.7 x bound",
                "-",
                "info (no baselines)",
            )
        # docs/targets.md: leader at most 80 MiB idle and idle + 30 MiB under load; standby 60.
        self.add(
            "sidecar RSS idle, cold (leader, before 1st event)",
            f"{idle.rss_cold / MIB:.1f} MiB",
            f"<= {LEADER_IDLE_MIB} MiB",
            f"{idle.rss_cold / (LEADER_IDLE_MIB * MIB):.2f}",
            verdict(idle.rss_cold <= LEADER_IDLE_MIB * MIB),
        )
        self.add(
            "sidecar RSS idle (after warm-up)",
            f"{idle.rss / MIB:.1f} MiB",
            f"<= {LEADER_IDLE_MIB} MiB",
            f"{idle.rss / (LEADER_IDLE_MIB * MIB):.2f}",
            verdict(idle.rss <= LEADER_IDLE_MIB * MIB),
        )
        growth = run.rss_peak - idle.rss
        self.add(
            "sidecar RSS under load (peak)",
            f"{run.rss_peak / MIB:.1f} MiB (+{growth / MIB:.1f})",
            f"<= idle + {LOAD_GROWTH_MIB} MiB",
            f"{growth / (LOAD_GROWTH_MIB * MIB):.2f}",
            verdict(growth <= LOAD_GROWTH_MIB * MIB),
        )
        self.add(
            f"idle CPU (leader, {idle.seconds:.0f} s)",
            f"{idle.millicores:.1f} mcores",
            "<= 5 mcores",
            f"{idle.millicores / 5:.2f}",
            verdict(idle.millicores <= 5),
        )
        self.add(
            f"standby idle CPU ({idle.seconds:.0f} s)",
            f"{idle.standby_millicores:.1f} mcores",
            "<= 5 mcores",
            f"{idle.standby_millicores / 5:.2f}",
            verdict(idle.standby_millicores <= 5),
        )
        self.add(
            "standby RSS",
            f"{idle.standby_rss / MIB:.1f} MiB",
            f"<= {STANDBY_MIB} MiB",
            f"{idle.standby_rss / (STANDBY_MIB * MIB):.2f}",
            verdict(idle.standby_rss <= STANDBY_MIB * MIB),
        )
        if run.oplog is not None:
            self.add(
                "empty getMore at the end of the run",
                f"{run.empty_getmore * 1000:.0f} ms",
                "-",
                f"oplog {run.oplog:,}",
                "info",
            )
        busy = ", ".join(f"{name} {sec:.1f}" for name, sec in run.cpu.items())
        self.add("CPU s during the end-to-end run", busy, "-", f"{run.seconds:.1f} s wall", "info")
        return run.per_second

    def latency(self, rate: float) -> None:
        a = self.args
        setup, load = self.setup("lat")
        try:
            pub.start_leader(setup, load, a.warmup)
            lat = pub.latency(load, a.warmup, rate, a.latency_seconds, deadline=300)
        finally:
            setup.stop()
            load.db.client.close()
        self.say(
            f"latency at {lat.achieved:.0f}/s: p50 {lat.p50 * 1000:.0f} ms, "
            f"p99 {lat.p99 * 1000:.0f} ms"
        )
        self.raw["latency"] = {
            "rate": lat.rate,
            "achieved": lat.achieved,
            "count": len(lat.samples),
            "p50": lat.p50,
            "p99": lat.p99,
            "max": lat.samples[-1],
        }
        where = f"at {lat.achieved:.0f} events/s, n={len(lat.samples)}"
        self.add(f"latency p50 ({where})", f"{lat.p50 * 1000:.0f} ms", "reported", "-", "info")
        self.add(f"latency p99 ({where})", f"{lat.p99 * 1000:.0f} ms", "reported", "-", "info")

    def failover(self) -> None:
        a = self.args
        setup, load = self.setup("fail", lease_ttl=a.failover_ttl)
        try:
            result = pub.failover(
                setup,
                load,
                rate=a.failover_rate,
                before_kill=a.failover_before,
                after_kill=a.failover_after,
                deadline=300,
            )
        finally:
            setup.stop()
            load.db.client.close()
        self.say(f"failover gap {result.gap:.2f} s, missing {result.missing}")
        self.raw["failover"] = asdict(result)
        bound = result.ttl + 1
        self.add(
            f"failover gap (TTL {result.ttl} s, {a.failover_rate:.0f} events/s)",
            f"{result.gap:.2f} s (kill to 1st ack {result.takeover:.2f} s)",
            f"<= {bound} s",
            f"{result.gap / bound:.2f}",
            verdict(result.gap <= bound),
        )
        self.add(
            "failover: inserted events never published",
            f"{result.missing} of {result.inserted}",
            "0",
            "-",
            verdict(result.missing == 0),
        )


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "cpus": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_start": os.getloadavg(),
    }


def table(rows: list[Row]) -> str:
    head = Row("metric", "value", "target", "ratio", "verdict")
    cols = list(
        zip(
            *[(r.metric, r.value, r.target, r.ratio, r.verdict) for r in [head, *rows]], strict=True
        )
    )
    widths = [max(len(c) for c in col) for col in cols]
    lines = []
    for n, r in enumerate([head, *rows]):
        cells = (r.metric, r.value, r.target, r.ratio, r.verdict)
        lines.append(
            "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"
        )
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
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
    return p


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


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    check(args)
    info = machine()
    started = time.monotonic()
    real = os.environ.get("LIBERATOR_TEST_MONGO_URI") or None
    with Stack(Path(tempfile.mkdtemp(prefix="liberator-bench-"))) as stack:
        stack.up(("pubsub", "redis"))
        if not real:
            stack.build(("mongo",))
        os.environ.update(stack.exports())  # PUBSUB_EMULATOR_HOST for this process's clients
        run = Run(stack, real, args)
        base = run.phase("baselines", run.baselines)
        run.phase("oplog", run.oplog)
        rate = run.phase("e2e", lambda: run.e2e(base)) or 0.0
        half = args.latency_rate or rate / 2
        if half > 0:
            run.phase("latency", lambda: run.latency(half))
        elif "latency" not in args.skip and (not args.only or "latency" in args.only):
            run.add(
                "latency",
                "not measured",
                "reported",
                "-",
                "skipped: no end-to-end rate (give --latency-rate)",
            )
        run.phase("failover", run.failover)
    info["loadavg_end"] = os.getloadavg()
    info["seconds"] = round(time.monotonic() - started, 1)
    info["mongo"] = "LIBERATOR_TEST_MONGO_URI" if real else "mongo-java-server (fresh per phase)"
    if args.json:
        print(
            json.dumps(
                {
                    "machine": info,
                    "table": table(run.rows),
                    "rows": [asdict(r) for r in run.rows],
                    "raw": run.raw,
                    "args": vars(args),
                },
                indent=2,
                default=str,
            )
        )
    else:
        print(table(run.rows))
        print(
            f"\nmachine: {info['cpus']} CPUs ({info['cpu']}), load average "
            f"{info['loadavg_start'][0]:.1f} at start, {info['loadavg_end'][0]:.1f} at end; "
            f"MongoDB: {info['mongo']}; {info['seconds']:.0f} s"
        )
    return 0  # a missed target is a finding in the table, not a failure of the run


if __name__ == "__main__":
    sys.exit(main())

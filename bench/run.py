"""One ``python -m bench`` run on one stack: its phases, each on a fresh MongoDB, as table rows.

The phases (baselines, oplog, e2e, latency, failover) are methods of :class:`Run`; each adds its
figures to ``rows`` (the table) and ``raw`` (``--json``). ``python -m bench.peer`` borrows its stack
handling (``fresh_mongo``, ``database``, ``server_pids``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from pymongo import MongoClient

from bench import publisher as pub
from bench.baselines import (
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
from bench.report import Row, verdict
from liberator_stack import Stack

__all__ = ["Run", "running"]

MIB = 1024 * 1024
_T = TypeVar("_T")
CLOSE = 2.0
"""The oplog phase's bound: a figure at the largest oplog within this factor of the smallest's."""


LEADER_IDLE_MIB = 80
LOAD_GROWTH_MIB = 30
STANDBY_MIB = 60
"""The RSS targets of docs/targets.md."""


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
        idle, run = self._end_to_end()
        self.raw["idle"] = asdict(idle)
        self.raw["e2e"] = {**asdict(run), "per_second": run.per_second}
        self._throughput_rows(base, run)
        self._footprint_rows(idle, run)
        return run.per_second

    def _end_to_end(self) -> tuple[pub.Idle, pub.EndToEnd]:
        """A leader and a standby sampled idle, then the leader under the full load."""
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
        return idle, run

    def _throughput_rows(self, base: tuple[Rate, Rate, Rate] | None, run: pub.EndToEnd) -> None:
        """k, and the end-to-end rate against the slowest baseline (B_ins over k)."""
        k = run.writes_per_event if run.writes_per_event is not None else 3.0
        self.add(
            "k (Mongo writes per event)",
            f"{k:.3f}",
            "-",
            "-",
            "info" if run.writes_per_event is not None else "info (assumed)",
        )
        if base is None:
            self.add(
                "end-to-end insert to publish ack",
                f"{run.per_second:,.0f} events/s",
                ">= 0.7 x bound",
                "-",
                "info (no baselines)",
            )
            return
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

    def _footprint_rows(self, idle: pub.Idle, run: pub.EndToEnd) -> None:
        """The sidecar's RSS and CPU against docs/targets.md, and each process's CPU in the run."""
        self._rss_rows(idle, run)
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

    def _rss_rows(self, idle: pub.Idle, run: pub.EndToEnd) -> None:
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


@contextmanager
def running(prefix: str, args: argparse.Namespace) -> Iterator[Run]:
    """A :class:`Run` on fresh servers: Pub/Sub and Redis, and the stand-in built (each phase
    starts its own), unless ``LIBERATOR_TEST_MONGO_URI`` names a real MongoDB."""
    real = os.environ.get("LIBERATOR_TEST_MONGO_URI") or None
    with Stack(Path(tempfile.mkdtemp(prefix=prefix))) as stack:
        stack.up(("pubsub", "redis"))
        if not real:
            stack.build(("mongo",))
        os.environ.update(stack.exports())  # PUBSUB_EMULATOR_HOST for this process's clients
        yield Run(stack, real, args)

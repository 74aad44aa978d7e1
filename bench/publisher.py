"""The sidecar under load: ``liberator publish`` as a real subprocess on the local stack.

Each measurement writes through pymongo and reads the outcome from the outbox (``status``,
``publishedAt`` is set when Pub/Sub acknowledged the message), so it times insert to publish ack.
Process figures come from ``/proc/<pid>``: ``VmRSS`` and ``utime + stime``. The process is
bench/sidecar.py's, the collections bench/load.py's, the figures bench/proc.py's; this module
holds the measurements (idle, end to end, latency, failover).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.baselines import quote
from bench.load import Load
from bench.proc import cpu_seconds, poll, py_spy, rss_bytes
from bench.sidecar import Sidecar, SidecarEnv

__all__ = [
    "EndToEnd",
    "Failover",
    "Idle",
    "Latency",
    "Load",
    "Sidecar",
    "SidecarEnv",
    "cpu_seconds",
    "end_to_end",
    "failover",
    "idle",
    "latency",
    "poll",
    "rss_bytes",
    "start_leader",
]


def start_leader(setup: SidecarEnv, load: Load, warmup: int) -> Sidecar:
    """Start a sidecar, wait for its lease, and push ``warmup`` events through it.

    The warm-up opens both change streams and loads the Pub/Sub client (imported lazily).
    """
    car = setup.sidecar()
    poll(car.is_leader, what="the sidecar takes the lease", deadline=120)
    load.wait_capturing()
    load.insert(0, warmup, 0)
    load.wait_published(warmup, deadline=120)
    return car


@dataclass(frozen=True)
class Idle:
    """A leader (and a standby) with nothing to do."""

    rss_cold: int
    """VmRSS right after taking the lease, before the first event (bytes)."""
    rss: int
    """VmRSS after the warm-up, once quiet (bytes): the idle figure."""
    millicores: float
    """The leader's CPU while quiet, in thousandths of a core."""
    standby_rss: int
    """VmRSS of a standby replica (bytes)."""
    standby_millicores: float
    """The standby's CPU over the same window."""
    seconds: float
    """How long the CPU was sampled."""


def idle(
    setup: SidecarEnv, load: Load, warmup: int, seconds: float, profile: Path | None = None
) -> tuple[Sidecar, Idle]:
    """Start a leader and a standby, warm the leader up, then sample both for ``seconds``."""
    car = setup.sidecar()
    poll(car.is_leader, what="the sidecar takes the lease", deadline=120)
    standby = setup.sidecar()
    poll(lambda: standby.metric("liberator_leader") == 0.0, what="the standby is up", deadline=120)
    load.wait_capturing()
    time.sleep(2.0)  # let the relay open its stream too
    cold = car.rss_bytes()
    load.insert(0, warmup, 0)
    load.wait_published(warmup, deadline=120)
    time.sleep(3.0)  # let the last acks, checkpoints and the backlog count settle
    with py_spy(car.pid, profile and profile / "idle.txt"):
        cpu0, spare0, t0 = car.cpu_seconds(), standby.cpu_seconds(), time.monotonic()
        time.sleep(seconds)
        cpu1, spare1, t1 = car.cpu_seconds(), standby.cpu_seconds(), time.monotonic()
    spare_rss = standby.rss_bytes()
    standby.stop()
    return car, Idle(
        rss_cold=cold,
        rss=car.rss_bytes(),
        millicores=1000.0 * (cpu1 - cpu0) / (t1 - t0),
        standby_rss=spare_rss,
        standby_millicores=1000.0 * (spare1 - spare0) / (t1 - t0),
        seconds=t1 - t0,
    )


@dataclass(frozen=True)
class EndToEnd:
    """Maximum throughput, insert to publish ack."""

    events: int
    """Events inserted and published."""
    seconds: float
    """From the first insert to the last ``publishedAt``."""
    writes_per_event: float | None
    """k: Mongo writes (oplog entries: entity, outbox, checkpoints) per event; None if unknown."""
    rss_peak: int
    """Highest VmRSS sampled during the run (bytes)."""
    insert_seconds: float
    """How long the inserts alone took (the load generator shares the emulator)."""
    cpu: dict[str, float]
    """CPU seconds each process used during the run (sidecar, servers, the bench itself)."""
    oplog: int | None
    """Oplog entries at the end of the run (None if unreadable)."""
    empty_getmore: float
    """Seconds one ``getMore`` on a quiet stream takes at the end of the run."""

    @property
    def per_second(self) -> float:
        return self.events / self.seconds


def end_to_end(
    car: Sidecar,
    load: Load,
    *,
    first: int,
    count: int,
    entities: int,
    deadline: float,
    servers: dict[str, int],
    profile: Path | None = None,
) -> EndToEnd:
    """Insert ``count`` events as fast as ``insert_many`` goes; time until all are acked.

    ``servers`` names other processes (name -> pid) whose CPU time is reported alongside.
    """
    pids = {"sidecar": car.pid, "bench": os.getpid(), **servers}
    before = load.published()
    writes0 = load.writes()
    peak = [car.rss_bytes()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            with contextlib.suppress(OSError):
                peak[0] = max(peak[0], car.rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    with py_spy(car.pid, profile and profile / "load.txt"):
        start = time.time()
        load.insert(first, count, entities)
        inserted = time.time()
        load.wait_published(before + count, deadline=deadline)
        end = load.last_published_at()
        cpu = {name: round(cpu_seconds(pid) - cpu0[name], 2) for name, pid in pids.items()}
    done.set()
    sampler.join()
    time.sleep(2.0)  # the relay checkpoint is written at most once a second: count it in k
    writes1 = load.writes()
    k = None if writes0 is None or writes1 is None else (writes1 - writes0) / count
    return EndToEnd(
        events=count,
        seconds=end - start,
        writes_per_event=k,
        rss_peak=peak[0],
        insert_seconds=inserted - start,
        cpu=cpu,
        oplog=load.oplog_size(),
        empty_getmore=load.empty_getmore(),
    )


@dataclass(frozen=True)
class Latency:
    """Insert to publish ack of paced single inserts."""

    rate: float
    """Target insert rate (events/s)."""
    achieved: float
    """Insert rate actually reached."""
    samples: list[float]
    """One latency per event, seconds, sorted."""

    def percentile(self, p: float) -> float:
        index = min(len(self.samples) - 1, max(0, round(p / 100 * len(self.samples)) - 1))
        return self.samples[index]

    @property
    def p50(self) -> float:
        return statistics.median(self.samples)

    @property
    def p99(self) -> float:
        return self.percentile(99)


def paced_inserts(
    load: Load, first: int, rate: float, seconds: float, stop: threading.Event | None = None
) -> dict[str, float]:
    """Insert new entities at ``rate``/s; return entityId -> insert time (epoch seconds).

    Every 10 ms the documents that are due go in one ``insert_many``, so the rate holds even
    when one round trip to the busy emulator takes longer than the spacing of the events.
    """
    sent: dict[str, float] = {}
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < seconds and not (stop and stop.is_set()):
        due = int((time.monotonic() - start) * rate) + 1 - i
        if due <= 0:
            time.sleep(0.01)
            continue
        docs = [quote(first + i + n) for n in range(due)]
        now = time.time()
        load.entities.insert_many(docs, ordered=False)
        sent.update((doc["quoteId"], now) for doc in docs)
        i += due
    return sent


def latency(load: Load, first: int, rate: float, seconds: float, deadline: float) -> Latency:
    """Pace new-entity inserts at ``rate`` for ``seconds``; latency = publishedAt - insert."""
    before = load.published()
    start = time.monotonic()
    sent = paced_inserts(load, first, rate, seconds)
    achieved = len(sent) / (time.monotonic() - start)
    load.wait_published(before + len(sent), deadline=deadline)
    published = load.published_times()
    samples = sorted(published[key] - at for key, at in sent.items())
    return Latency(rate=rate, achieved=achieved, samples=samples)


@dataclass(frozen=True)
class Failover:
    """SIGKILL of the leader under steady load, with a standby ready."""

    ttl: int
    """Lease TTL of both sidecars (s)."""
    gap: float
    """Last publishedAt before the kill to the first after it (s)."""
    takeover: float
    """Kill to the first publishedAt after it (s)."""
    inserted: int
    """Events inserted during the run."""
    missing: int
    """Inserted events with no published outbox document: the gaps (must be 0)."""


def failover(
    setup: SidecarEnv,
    load: Load,
    *,
    rate: float,
    before_kill: float,
    after_kill: float,
    deadline: float,
) -> Failover:
    """Two sidecars, steady inserts at ``rate``; SIGKILL the leader; measure the publish gap."""
    cars = [setup.sidecar(), setup.sidecar()]
    leader = poll(
        lambda: next((c for c in cars if c.is_leader()), None),
        what="one of two sidecars takes the lease",
        deadline=120,
    )
    standby = next(c for c in cars if c is not leader)
    load.wait_capturing()
    # Warm the leader up, so the measured gap is the takeover and not a first start.
    load.insert(0, 20, 0)
    load.wait_published(20, deadline=120)
    stop = threading.Event()
    sent: dict[str, float] = {}
    writer = threading.Thread(
        target=lambda: sent.update(
            paced_inserts(load, 20, rate, before_kill + after_kill + 60, stop)
        ),
        daemon=True,
    )
    writer.start()
    time.sleep(before_kill)
    leader.kill()
    killed = time.time()
    poll(standby.is_leader, what="the standby takes the lease", deadline=120)
    time.sleep(after_kill)
    stop.set()
    writer.join()
    with contextlib.suppress(RuntimeError):  # what is still missing then is reported below
        load.wait_published(20 + len(sent), deadline=deadline)
    times = sorted(load.published_times().values())
    last_before = max((t for t in times if t <= killed), default=killed)
    first_after = min(t for t in times if t > killed)
    published = load.published_times()
    missing = sum(1 for key in sent if key not in published)
    return Failover(
        ttl=setup.lease_ttl,
        gap=first_after - last_before,
        takeover=first_after - killed,
        inserted=len(sent),
        missing=missing,
    )

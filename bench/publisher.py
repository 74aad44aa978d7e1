"""The sidecar under load: ``liberator publish`` as a real subprocess on the local stack.

Each measurement writes through pymongo and reads the outcome from the outbox (``status``,
``publishedAt`` is set when Pub/Sub acknowledged the message), so it times insert to publish ack.
Process figures come from ``/proc/<pid>``: ``VmRSS`` and ``utime + stime``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection

from bench.baselines import INSERT_BATCH, quote
from liberator_stack.process import free_port

__all__ = [
    "EndToEnd",
    "Failover",
    "Idle",
    "Latency",
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

LIBERATOR = Path(sys.executable).with_name("liberator")
OUTBOX = "quotes_outbox"
CHECKPOINTS = "liberator.checkpoints"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def poll(check: Callable[[], Any], *, what: str, deadline: float, every: float = 0.25) -> Any:
    """Call ``check`` until it returns something truthy; raise with ``what`` after ``deadline``."""
    end = time.monotonic() + deadline
    last: Any = None
    while time.monotonic() < end:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise RuntimeError(f"{what}: not reached within {deadline:.0f}s (last: {last!r})")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all threads), from ``/proc/<pid>/stat``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from ``VmRSS`` in ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


@contextlib.contextmanager
def py_spy(pid: int, output: Path | None) -> Iterator[None]:
    """Record ``pid`` with py-spy into ``output`` (collapsed stacks) while the block runs."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if output is None or not Path(spy).exists():
        yield
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            "100",
            "--threads",
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Sidecar:
    """One ``liberator publish`` process and what ``/proc`` says about it."""

    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Sidecar:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                [str(LIBERATOR), "publish"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def metric(self, name: str) -> float | None:
        """An unlabelled sample from ``/metrics``, or None when down or absent."""
        url = f"http://127.0.0.1:{self.env['LIBERATOR_HTTP_PORT']}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body = response.read().decode()
        except (OSError, urllib.error.URLError):
            return None
        for line in body.splitlines():
            sample, _, value = line.rpartition(" ")
            if sample == name:
                return float(value)
        return None

    def is_leader(self) -> bool:
        if not self.alive():
            raise RuntimeError(
                f"liberator publish exited ({self.popen and self.popen.poll()}); "
                f"log {self.log}:\n{self.log.read_text(errors='replace')[-3000:]}"
            )
        return self.metric("liberator_leader") == 1.0

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=30)

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass
class SidecarEnv:
    """A fresh publisher's environment (database, topic, lease keys) and its collections."""

    exports: dict[str, str]
    """The stack's exports: Mongo URI, Pub/Sub emulator, Redis URL, project."""
    database: str
    """A database of its own, so figures never mix with another run's data."""
    topic: str
    """Topic id; created here (the sidecar does not create topics)."""
    run_dir: Path
    """Where the sidecars' logs go."""
    lease_ttl: int = 10
    """LIBERATOR_LEASE_TTL_SECONDS of the sidecars."""
    sidecars: list[Sidecar] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", ""),
            "LIBERATOR_MONGO_URI": self.exports["LIBERATOR_MONGO_URI"],
            "LIBERATOR_DATABASE": self.database,
            "LIBERATOR_COLLECTION": "quotes",
            "LIBERATOR_ENTITY_TYPE": "quote",
            "LIBERATOR_ID_FIELD": "quoteId",
            "LIBERATOR_VERSION_FIELD": "version",
            "LIBERATOR_PUBSUB_PROJECT": self.exports["LIBERATOR_PUBSUB_PROJECT"],
            "PUBSUB_EMULATOR_HOST": self.exports["PUBSUB_EMULATOR_HOST"],
            "LIBERATOR_TOPIC": self.topic,
            "LIBERATOR_REDIS_URL": self.exports["LIBERATOR_REDIS_URL"],
            "LIBERATOR_PUBLISHER": f"bench/{self.database}",
            "LIBERATOR_LEASE_TTL_SECONDS": str(self.lease_ttl),
            "LIBERATOR_LOG_LEVEL": "WARNING",
            # mongo-java-server fails updateLookup in a dotted collection name; MongoDB does not.
            "LIBERATOR_OUTBOX_COLLECTION": OUTBOX,
        }

    def create_topic(self) -> None:
        from google.cloud import pubsub_v1  # noqa: PLC0415  (grpc: import only when needed)

        client = pubsub_v1.PublisherClient()
        client.create_topic(
            name=client.topic_path(self.exports["LIBERATOR_PUBSUB_PROJECT"], self.topic)
        )

    def sidecar(self) -> Sidecar:
        n = len(self.sidecars)
        env = {
            **self.env(),
            "LIBERATOR_HTTP_PORT": str(free_port()),
            "LIBERATOR_POD_NAME": f"bench-{n}",
        }
        car = Sidecar(env, self.run_dir / f"{self.database}-sidecar-{n}.log").start()
        self.sidecars.append(car)
        return car

    def stop(self) -> None:
        for car in self.sidecars:
            car.stop()


class Load:
    """The bench's view of one publisher's collections."""

    def __init__(self, client: MongoClient[dict[str, Any]], database: str) -> None:
        self.db = client[database]
        self.entities: Collection[dict[str, Any]] = self.db["quotes"]
        self.outbox: Collection[dict[str, Any]] = self.db[OUTBOX]
        self.database = database

    def published(self) -> int:
        return self.outbox.count_documents({"status": "published"})

    def not_published(self) -> int:
        return self.outbox.count_documents({"status": {"$ne": "published"}})

    def writes(self) -> int | None:
        """Oplog entries of this database's three collections so far (None if unreadable)."""
        try:
            oplog = self.db.client["local"]["oplog.rs"]
            return sum(
                oplog.count_documents({"ns": f"{self.database}.{name}"})
                for name in ("quotes", OUTBOX, CHECKPOINTS)
            )
        except Exception:  # a real server may refuse the oplog to this user
            return None

    def wait_capturing(self, deadline: float = 120) -> None:
        """Wait for the capture checkpoint: the leader's stream is open from then on.

        The lease alone is not enough: a first start captures from "now", so a change written
        before the capture stream opened is (by design) not captured.
        """
        poll(
            lambda: self.db[CHECKPOINTS].find_one({"_id": f"bench/{self.database}#capture"}),
            what="the capture checkpoint is written",
            deadline=deadline,
        )

    def oplog_size(self) -> int | None:
        try:
            return self.db.client["local"]["oplog.rs"].estimated_document_count()
        except Exception:  # a real server may refuse the oplog to this user
            return None

    def empty_getmore(self, rounds: int = 5) -> float:
        """Mean seconds of a ``getMore`` that finds nothing (what a live stream pays per poll)."""
        with self.db["quiet"].watch(max_await_time_ms=100) as stream:
            stream.try_next()
            start = time.perf_counter()
            for _ in range(rounds):
                stream.try_next()
            return (time.perf_counter() - start) / rounds

    def insert(self, first: int, count: int, entities: int) -> None:
        for i in range(first, first + count, INSERT_BATCH):
            self.entities.insert_many(
                [quote(j, entities) for j in range(i, min(first + count, i + INSERT_BATCH))],
                ordered=False,
            )

    def wait_published(self, total: int, deadline: float) -> None:
        poll(
            lambda: self.published() >= total,
            what=f"{total} outbox documents published",
            deadline=deadline,
            every=0.5,
        )

    def last_published_at(self) -> float:
        doc = self.outbox.find_one({"status": "published"}, sort=[("publishedAt", -1)])
        assert doc is not None
        return _epoch(doc["publishedAt"])

    def published_times(self) -> dict[str, float]:
        """entityId -> publishedAt (epoch seconds) of every published event."""
        return {
            d["entityId"]: _epoch(d["publishedAt"])
            for d in self.outbox.find({"status": "published"}, {"entityId": 1, "publishedAt": 1})
        }


def _epoch(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


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

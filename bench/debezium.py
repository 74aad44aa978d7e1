"""Debezium Server 3.6 (MongoDB connector, Pub/Sub sink) as the peer a user would pick.

The distribution comes from Maven Central once, into ``~/.cache/liberator/debezium/<version>``
(``mvn dependency:copy`` of the ``tar.gz``, then unpacked; a stamp file marks a complete copy).
:class:`DebeziumServer` runs it on the local stack with an ``application.properties`` of its own
in a temporary folder, every port on loopback.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from liberator_stack.process import (
    Proc,
    StackError,
    cache_dir,
    file_lock,
    free_port,
    log_tail,
    run_checked,
    spawn,
    swapped_in,
)

__all__ = ["ARTIFACT", "DEFAULT_JAVA", "VERSION", "DebeziumServer", "fetch", "home", "java_problem"]

VERSION = "3.6.1.Final"
ARTIFACT = f"io.debezium:debezium-server-dist:{VERSION}:tar.gz"
SIZE_MB = 780
"""About how large the download is, for the progress lines."""
DEFAULT_JAVA = Path("/usr/lib/jvm/temurin-25-jdk-amd64/bin/java")
"""Debezium Server 3.x needs Java 21+; the machine's default java is 17."""
STAMP = "unpacked.ok"


def say(message: str) -> None:
    print(f"[debezium] {message}", file=sys.stderr, flush=True)


def home() -> Path:
    """The unpacked distribution: ``<cache>/debezium/<version>/debezium-server``."""
    return cache_dir() / "debezium" / VERSION / "debezium-server"


def _complete() -> bool:
    return (home().parent / STAMP).exists() and any((home()).glob("debezium-server-*runner.jar"))


def _progress(folder: Path, stop: threading.Event, every: float = 10.0) -> None:
    """Print how much of the download is on disk, every ``every`` seconds, until ``stop``."""
    repo = Path.home() / ".m2" / "repository" / "io" / "debezium" / "debezium-server-dist"
    started = time.monotonic()
    while not stop.wait(every):
        size = 0
        for where in (repo, folder):
            with contextlib.suppress(OSError):
                size += sum(p.stat().st_size for p in where.rglob("*") if p.is_file())
        say(
            f"downloading: {size / 1e6:,.0f} of about {SIZE_MB} MB after "
            f"{time.monotonic() - started:.0f} s"
        )


def fetch() -> Path:
    """Download and unpack the distribution unless a complete copy is cached; return its folder."""
    if _complete():
        return home()
    target = home().parent
    with file_lock(target.parent / f"{VERSION}.lock"):
        if _complete():
            return home()
        for tool in ("mvn", "tar"):
            if shutil.which(tool) is None:
                raise StackError(f"{tool} is not on PATH: apt-get install maven tar")
        log = cache_dir() / "logs" / "debezium-fetch.log"
        started = time.monotonic()
        with swapped_in(target, prefix=f"{VERSION}.") as work:
            say(f"fetching {ARTIFACT} (about {SIZE_MB} MB) with Maven; log {log}")
            stop = threading.Event()
            ticker = threading.Thread(target=_progress, args=(work, stop), daemon=True)
            ticker.start()
            try:
                run_checked(
                    [
                        "mvn",
                        "-B",
                        "-q",
                        "dependency:copy",
                        f"-Dartifact={ARTIFACT}",
                        f"-DoutputDirectory={work}",
                        "-Dmdep.overWriteReleases=true",
                    ],
                    log=log,
                    what=f"mvn dependency:copy {ARTIFACT}",
                )
            finally:
                stop.set()
                ticker.join()
            archive = next(work.glob("debezium-server-dist-*.tar.gz"))
            say(f"downloaded in {time.monotonic() - started:.0f} s; unpacking")
            run_checked(
                ["tar", "-xzf", str(archive), "-C", str(work)],
                log=log,
                what=f"tar -xzf {archive.name}",
            )
            archive.unlink()  # Maven keeps its own copy in the local repository
            (work / STAMP).write_text(f"{ARTIFACT}\n")
        say(f"Debezium Server {VERSION} ready in {home()} ({time.monotonic() - started:.0f} s)")
    return home()


def java_problem(java: Path) -> str | None:
    """Why ``java`` cannot run Debezium Server (None when it can), without starting it."""
    if not java.is_file() or not os.access(java, os.X_OK):
        return f"{java} is not an executable file"
    release = java.parent.parent / "release"  # every JDK since 9 ships one
    with contextlib.suppress(OSError):
        for line in release.read_text().splitlines():
            if line.startswith("JAVA_VERSION="):
                major = int(line.split("=", 1)[1].strip('"').split(".")[0])
                if major < 21:
                    return f"{java} is Java {major}; Debezium Server {VERSION} needs 21 or later"
    return None


def properties(
    *,
    mongo_uri: str,
    database: str,
    collection: str,
    prefix: str,
    project: str,
    emulator: str,
    ordering: bool,
    http_port: int,
    offsets: Path,
) -> str:
    """The ``application.properties`` of one run: the MongoDB connector and the Pub/Sub sink.

    Everything else stays as shipped (batching, flow control, delivery timeout, JSON format).
    """
    settings = {
        "debezium.sink.type": "pubsub",
        "debezium.sink.pubsub.project.id": project,
        "debezium.sink.pubsub.address": emulator,  # plaintext, no credentials
        "debezium.sink.pubsub.ordering.enabled": str(ordering).lower(),
        "debezium.source.connector.class": "io.debezium.connector.mongodb.MongoDbConnector",
        "debezium.source.mongodb.connection.string": mongo_uri,
        "debezium.source.topic.prefix": prefix,
        "debezium.source.capture.scope": "collection",
        "debezium.source.capture.target": f"{database}.{collection}",
        # Both kept as the published runs had them (the stand-in then lacked `hello` and
        # MongoDB-shaped events in client stages; it has both now). No snapshot: both systems
        # capture from when their stream opens. The collection scope alone (a collection-level
        # watch) selects the changes, so no include list is needed.
        "debezium.source.snapshot.mode": "no_data",
        "debezium.source.filters.match.mode": "literal",
        "debezium.source.offset.storage.file.filename": str(offsets),
        "debezium.source.offset.flush.interval.ms": "0",
        "quarkus.http.host": "127.0.0.1",
        "quarkus.http.port": str(http_port),
        "quarkus.log.console.json": "false",
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


@dataclass
class DebeziumServer:
    """One Debezium Server configuration in a folder of its own; started and stopped at will.

    The offsets file lives in that folder, so a restart resumes where the last run stopped.
    """

    folder: Path
    """Working directory: ``config/application.properties``, ``offsets.dat``, the logs."""
    java: Path
    mongo_uri: str
    database: str
    collection: str
    project: str
    emulator: str
    ordering: bool
    prefix: str = "bench"
    runs: list[Proc] = field(default_factory=list)

    @property
    def topic(self) -> str:
        """The sink's destination: ``<prefix>.<database>.<collection>`` (create it first)."""
        return f"{self.prefix}.{self.database}.{self.collection}"

    def write_config(self) -> None:
        (self.folder / "config").mkdir(parents=True, exist_ok=True)
        (self.folder / "config" / "application.properties").write_text(
            properties(
                mongo_uri=self.mongo_uri,
                database=self.database,
                collection=self.collection,
                prefix=self.prefix,
                project=self.project,
                emulator=self.emulator,
                ordering=self.ordering,
                http_port=free_port(),
                offsets=self.folder / "offsets.dat",
            )
        )

    def start(self) -> Proc:
        """Start the server (as ``run.sh`` does, with the JDK named and ``--add-opens``)."""
        self.write_config()  # a fresh HTTP port on every start
        dist = home()
        runner = next(dist.glob("debezium-server-*runner.jar"))
        classpath = os.pathsep.join(
            [str(runner), str(dist / "config" / "lib"), str(dist / "lib" / "*")]
        )
        # Without the --add-opens its shutdown hook fails on Java 25.
        argv = [
            str(self.java),
            "--add-opens",
            "java.base/java.lang=ALL-UNNAMED",
            "-cp",
            classpath,
            "io.debezium.server.Main",
        ]
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", ""),
            "JAVA_HOME": str(self.java.parent.parent),
        }
        proc = spawn(
            f"debezium-{len(self.runs)}",
            argv,
            self.folder / f"debezium-{len(self.runs)}.log",
            env=env,
            cwd=self.folder,
        )
        self.runs.append(proc)
        return proc

    @property
    def current(self) -> Proc:
        if not self.runs:
            raise RuntimeError("Debezium Server was not started")
        return self.runs[-1]

    def check_alive(self) -> None:
        """Raise with the log tail when the current run has exited."""
        proc = self.current
        if not proc.alive():
            code = proc.popen.poll() if proc.popen else "?"
            raise RuntimeError(
                f"Debezium Server exited ({code}); log {proc.log}:\n{log_tail(proc.log, 15)}"
            )

    def stop(self) -> None:
        """SIGTERM (it commits its offsets on the way out), SIGKILL after 60 s."""
        for proc in self.runs:
            proc.stop(timeout=60)

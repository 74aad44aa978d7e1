"""MongoDB for tests: mongo-java-server (Maven Central) under our launcher, with its oplog on.

No MongoDB server can be installed here. mongo-java-server speaks the wire protocol and serves
change streams from an oplog that our launcher (``hack/mongo/LiberatorMongo.java``) enables. The
H2 backend keeps data and oplog in one file under the run directory, so a restart on the same
port resumes where it stopped. Differences from MongoDB: docs/local-stack.md (MongoDB section).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from liberator_stack.nodeconf import listen_host
from liberator_stack.process import (
    Say,
    Server,
    StackError,
    cache_dir,
    file_lock,
    free_port,
    log_matches,
    run_checked,
    spawn,
    swapped_in,
    wait_until,
)

__all__ = [
    "MAX_AGE_ENV",
    "MAX_ENTRIES_ENV",
    "VERSION",
    "build",
    "home",
    "launcher_argv",
    "oplog_limits",
    "require_client",
    "start",
]

VERSION = "1.47.0"
"""mongo-java-server release; keep in step with ``hack/mongo/pom.xml``."""

SOURCES = Path(__file__).resolve().parents[1] / "mongo"
LAUNCHER = "LiberatorMongo"
STAMP = "built.sha256"

# Modest memory; C1-only JIT and serial GC start the JVM faster on a shared 2-core machine.
JVM_FLAGS = (
    # The oplog index and H2's page cache (LiberatorMongo.java) live in the heap. The heap grows
    # only as they do: a test run stays small, and a 100,000-event bench (some 300,000 oplog
    # entries) spent a quarter of its CPU in GC at 1.5 GB.
    "-Xmx4g",
    "-Xss512k",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    # One INFO line per client connection would drown the log.
    "-Dorg.slf4j.simpleLogger.log.de.bwaldvogel.mongo.wire=warn",
    "-Dorg.slf4j.simpleLogger.showDateTime=true",
)


def home() -> Path:
    """This launcher's build folder: ``lib/`` (jars) and ``classes/`` (our launcher).

    Named by the pom's and the launcher's hash, so checkouts with different launchers (the
    worktrees of one machine share the cache) each keep their own build instead of rebuilding
    over each other's.
    """
    return cache_dir() / "mongo" / VERSION / _fingerprint()[:16]


def _fingerprint() -> str:
    """Changes when the pom or the launcher changes, so an edit rebuilds without a manual clean."""
    digest = hashlib.sha256(VERSION.encode())
    for name in ("pom.xml", f"{LAUNCHER}.java"):
        digest.update((SOURCES / name).read_bytes())
    return digest.hexdigest()


def _built(target: Path) -> bool:
    stamp = target / STAMP
    return stamp.exists() and stamp.read_text().strip() == _fingerprint()


def _tools(say: Say) -> None:
    missing = [tool for tool in ("java", "javac", "mvn") if shutil.which(tool) is None]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise StackError(
            f"{', '.join(missing)} missing and apt-get is not available: install a JDK 17 and Maven"
        )
    say(f"installing {', '.join(missing)} with apt-get (a minute or two)")
    log = cache_dir() / "logs" / "apt-mongo.log"
    run_checked(["apt-get", "update", "-qq"], log=log, what="apt-get update")
    run_checked(
        ["apt-get", "install", "-y", "-qq", "openjdk-17-jdk-headless", "maven"],
        log=log,
        what="apt-get install openjdk-17-jdk-headless maven",
    )


def build(say: Say) -> None:
    """Fetch the jars with Maven and compile the launcher into :func:`home` (idempotent)."""
    target = home()
    if _built(target):
        return
    with file_lock(target.parent / f"{VERSION}.lock"):
        if _built(target):
            return
        _tools(say)
        started = time.monotonic()
        say(f"building mongo-java-server {VERSION} into {target}")
        log = cache_dir() / "logs" / "mongo-build.log"
        # Build next to the target and swap it in, so a failed build leaves no half cache.
        with swapped_in(target, prefix=f"{VERSION}.") as work:
            say("fetching jars with Maven (about 10 s when ~/.m2 is cold)")
            run_checked(
                [
                    "mvn",
                    "-B",
                    "-q",
                    "-f",
                    str(SOURCES / "pom.xml"),
                    f"-Dmongo-java-server.version={VERSION}",
                    "dependency:copy-dependencies",
                    f"-DoutputDirectory={work / 'lib'}",
                ],
                log=log,
                what="mvn dependency:copy-dependencies",
            )
            say("compiling the launcher")
            run_checked(
                [
                    "javac",
                    "-nowarn",
                    "-d",
                    str(work / "classes"),
                    "-cp",
                    str(work / "lib") + "/*",
                    str(SOURCES / f"{LAUNCHER}.java"),
                ],
                log=log,
                what=f"javac {LAUNCHER}.java",
            )
            (work / STAMP).write_text(_fingerprint() + "\n")
        say(f"mongo-java-server built in {time.monotonic() - started:.1f}s")


MAX_ENTRIES_ENV = "LIBERATOR_MONGO_OPLOG_MAX_ENTRIES"
"""Caps the oplog of a ``hack/stack up mongo`` server by entries (unset: unbounded)."""
MAX_AGE_ENV = "LIBERATOR_MONGO_OPLOG_MAX_AGE_SECONDS"
"""Caps it by age in seconds: older entries are trimmed (unset: unbounded)."""


def oplog_limits(
    max_entries: int | None = None,
    max_age_seconds: float | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[int | None, float | None]:
    """The oplog cap: the arguments, else :data:`MAX_ENTRIES_ENV` / :data:`MAX_AGE_ENV`.

    A bad value fails with a :class:`StackError` that names the argument or variable.
    """
    env = os.environ if env is None else env
    entries: int | None = max_entries
    if entries is None and env.get(MAX_ENTRIES_ENV, "").strip():
        raw = env[MAX_ENTRIES_ENV].strip()
        if not raw.isdigit():
            raise StackError(
                f"{MAX_ENTRIES_ENV} must be a whole number of oplog entries, such "
                f"as 1000, got {raw!r}"
            )
        entries = int(raw)
    if entries is not None and (
        isinstance(entries, bool) or not isinstance(entries, int) or entries < 1
    ):
        what = "oplog_max_entries" if max_entries is not None else MAX_ENTRIES_ENV
        raise StackError(
            f"{what} must be a whole number of oplog entries of at least 1, got {entries!r}"
        )
    age: float | None = max_age_seconds
    if age is None and env.get(MAX_AGE_ENV, "").strip():
        raw = env[MAX_AGE_ENV].strip()
        try:
            age = float(raw)
        except ValueError:
            raise StackError(
                f"{MAX_AGE_ENV} must be a number of seconds, such as 3600, got {raw!r}"
            ) from None
    if age is not None and (
        isinstance(age, bool) or not isinstance(age, int | float) or not 0 < age < float("inf")
    ):
        what = "oplog_max_age_seconds" if max_age_seconds is not None else MAX_AGE_ENV
        raise StackError(f"{what} must be a positive number of seconds, got {age!r}")
    return entries, age


def require_client() -> None:
    """Fail at once, not after the start timeout, when the running python lacks pymongo."""
    try:
        import pymongo  # noqa: F401, PLC0415 - late, so `hack/stack build` needs no venv
    except ImportError as error:
        raise StackError(
            f"python module {error.name or 'pymongo'!r} is missing from "
            f"{sys.executable}: run 'make venv' (hack/stack uses .venv when it "
            f"exists)"
        ) from None


def _ping(uri: str) -> bool:
    import pymongo  # noqa: PLC0415 - late, so `hack/stack build` works without the venv

    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
        uri, serverSelectionTimeoutMS=500, connectTimeoutMS=500
    )
    try:
        client.admin.command("ping")
    finally:
        client.close()
    return True


def launcher_argv(*args: str) -> list[str]:
    """The command line of the built launcher with ``args`` (HOST PORT BACKEND [options])."""
    java = shutil.which("java")
    if java is None:
        raise StackError("java is not on PATH: install a JDK 17 (openjdk-17-jdk-headless)")
    classpath = os.pathsep.join([str(home() / "classes"), str(home() / "lib" / "*")])
    return [java, *JVM_FLAGS, "-cp", classpath, LAUNCHER, *args]


def start(
    run_dir: Path,
    port: int | None = None,
    host: str | None = None,
    *,
    oplog_max_entries: int | None = None,
    oplog_max_age_seconds: float | None = None,
) -> Server:
    """Start on ``port`` (or a free one) with the H2 file ``run_dir/mongo-records.h2``; wait for a
    ping.

    ``oplog_max_entries`` and ``oplog_max_age_seconds`` cap the oplog (default: the variables
    :data:`MAX_ENTRIES_ENV` and :data:`MAX_AGE_ENV`, else unbounded). A change stream that
    resumes from a trimmed point fails with ChangeStreamHistoryLost (286), as on MongoDB.
    """
    entries, age = oplog_limits(oplog_max_entries, oplog_max_age_seconds)
    require_client()
    target = home()
    if not _built(target):
        raise StackError(
            "mongo-java-server is not built (or the launcher changed): run hack/stack build"
        )
    port = port or free_port()
    run_dir.mkdir(parents=True, exist_ok=True)
    data = run_dir / "mongo-records.h2"  # the launcher's own format (LiberatorMongo.H2Store)
    backend = f"h2:{data}"
    # One address only: the node IP for a stack that runs the node (pods and host clients reach
    # it there), else loopback.
    host = listen_host(host)
    argv = launcher_argv(host, str(port), backend)
    details = {"port": str(port), "backend": backend, "version": VERSION}
    if entries is not None:
        argv += ["--oplog-max-entries", str(entries)]
        details["oplog_max_entries"] = str(entries)
    if age is not None:
        argv += ["--oplog-max-age-seconds", repr(float(age))]
        details["oplog_max_age_seconds"] = repr(float(age))
    proc = spawn("mongo", argv, run_dir / "mongo.log")
    uri = f"mongodb://{host}:{port}/?directConnection=true"
    # The log line first: a ping alone could reach another server that already holds the port.
    logged = log_matches(proc.log, rf"liberator-mongo: ready on {re.escape(host)}:{port} ")
    wait_until(proc, lambda: logged() and _ping(uri), timeout=60, what="mongo-java-server")
    return Server(
        "mongo", [proc], exports={"LIBERATOR_MONGO_URI": uri}, details=details, run_dir=run_dir
    )

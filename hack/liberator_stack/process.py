"""Processes of the local stack: start on loopback, wait until ready, show logs, stop cleanly."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

Say = Callable[[str], None]


def say_stderr(message: str) -> None:
    print(f"[stack] {message}", file=sys.stderr, flush=True)


class StackError(RuntimeError):
    """A server could not be built or started. The message carries the log tail."""


def cache_dir() -> Path:
    """Where builds and downloads are cached: ``LIBERATOR_CACHE``, else ``~/.cache/liberator``."""
    path = Path(os.environ.get("LIBERATOR_CACHE", Path.home() / ".cache" / "liberator"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path``: two runs building or fetching into one cache folder at once
    must not write into each other."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def go_build_start(say: Say, name: str, version: str, minutes: int) -> tuple[str, Path]:
    """Go and the log for a build of ``name`` at ``version`` from the Go module proxy, said to
    take ``minutes`` the first time; raises when Go is not installed."""
    go = shutil.which("go")
    if go is None:
        raise StackError(
            f"go is not on PATH: install Go 1.24+ to build {name} {version} "
            "(only the Go module proxy is needed)"
        )
    log = cache_dir() / "logs" / f"{name}-{version}.log"
    say(
        f"building {name} {version} from the Go module proxy, ~{minutes} minutes "
        f"the first time (log: {log})"
    )
    return go, log


@contextlib.contextmanager
def swapped_in(target: Path, prefix: str) -> Iterator[Path]:
    """A fresh folder next to ``target`` to build into. When the block ends without an error the
    folder replaces ``target``; either way no half build is left in the cache."""
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    try:
        yield work
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def run_output(argv: list[str], *, check: bool = True) -> str:
    """Run a short host command (60 s at most) and return its stdout; with ``check``, raise
    naming the command and its stderr when it fails."""
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    if check and result.returncode != 0:
        raise StackError(
            f"{shlex.join(argv)} failed (exit {result.returncode}): "
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
    return result.stdout


def run_checked(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    log: Path,
    what: str,
    env: dict[str, str] | None = None,
) -> None:
    """Run a build step, appending its output to ``log``; raise with the log tail on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        result = subprocess.run(
            list(argv), cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env, check=False
        )
    if result.returncode != 0:
        raise StackError(f"{what} failed (exit {result.returncode}); log {log}:\n{log_tail(log)}")


@dataclass
class Proc:
    """One running process of a server, in its own process group."""

    name: str
    popen: subprocess.Popen[bytes] | None
    pid: int
    log: Path

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        try:
            os.kill(self.pid, 0)
        except OSError:
            return False
        return True

    def signal(self, sig: int) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        if not self.alive():
            self._reap()
            return
        self.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                break
            time.sleep(0.05)
        else:
            self.signal(signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=5)


def spawn(
    name: str,
    argv: Sequence[str],
    log: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Proc:
    """Start ``argv`` in a new session (so it survives the CLI and can be stopped as a group)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out = log.open("ab")
    try:
        popen = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    finally:
        out.close()
    return Proc(name=name, popen=popen, pid=popen.pid, log=log)


def wait_until(proc: Proc, ready: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Poll ``ready`` until true; fail with the log tail if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise StackError(f"{what} exited during start; log {proc.log}:\n{log_tail(proc.log)}")
        with contextlib.suppress(Exception):
            if ready():
                return
        time.sleep(0.1)
    proc.stop()
    raise StackError(
        f"{what} not ready after {timeout:.0f}s; log {proc.log}:\n{log_tail(proc.log)}"
    )


def log_matches(log: Path, pattern: str) -> Callable[[], bool]:
    regex = re.compile(pattern)
    return lambda: bool(regex.search(log.read_text(errors="replace")))


def http_get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    """One GET with a 2 s timeout, for readiness checks: the status and the body."""
    with urllib.request.urlopen(url, timeout=2, context=context) as response:
        return int(response.status), bytes(response.read())


def port_open(port: int, host: str = "127.0.0.1") -> Callable[[], bool]:
    def check() -> bool:
        with socket.create_connection((host, port), timeout=0.5):
            return True

    return check


@dataclass
class Server:
    """A started server: its processes and the settings a client needs (as env exports)."""

    name: str
    procs: list[Proc]
    exports: dict[str, str]
    details: dict[str, str] = field(default_factory=dict)
    run_dir: Path | None = None

    def alive(self) -> bool:
        return all(p.alive() for p in self.procs)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def logs(self) -> dict[str, Path]:
        return {p.name: p.log for p in self.procs}

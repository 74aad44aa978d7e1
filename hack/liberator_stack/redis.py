"""Debian's redis-server, installed with apt-get when missing."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from liberator_stack.nodeconf import listen_host
from liberator_stack.process import (
    Say,
    Server,
    StackError,
    cache_dir,
    free_port,
    run_checked,
    spawn,
    wait_until,
)


def binary() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )


def build(say: Say) -> None:
    if binary() is not None:
        return
    if shutil.which("apt-get") is None:
        raise StackError("redis-server is missing and apt-get is not available: install Redis 6+")
    say("installing redis-server with apt-get (about 30 s)")
    log = cache_dir() / "logs" / "apt-redis.log"
    run_checked(["apt-get", "update", "-qq"], log=log, what="apt-get update")
    run_checked(
        ["apt-get", "install", "-y", "-qq", "redis-server"],
        log=log,
        what="apt-get install redis-server",
    )


def ping(port: int, host: str = "127.0.0.1") -> bool:
    with socket.create_connection((host, port), timeout=0.5) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


def start(run_dir: Path, port: int | None = None, host: str | None = None) -> Server:
    exe = binary()
    if exe is None:
        raise StackError("redis-server is not installed; run hack/stack build")
    port = port or free_port()
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "redis.log"
    # No persistence: tests restart Redis to simulate an outage, and a lease must not survive it.
    host = listen_host(host)
    binds = sorted({"127.0.0.1", host})
    # Protected mode refuses every non-loopback client without a password; the node address is
    # reachable only from this machine and its pods.
    argv = [
        exe,
        "--port",
        str(port),
        "--bind",
        *binds,
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "yes" if host == "127.0.0.1" else "no",
        "--dir",
        str(run_dir),
        "--daemonize",
        "no",
    ]
    proc = spawn("redis", argv, log)
    wait_until(proc, lambda: ping(port, host), timeout=20, what="redis-server")
    url = f"redis://{host}:{port}/0"
    return Server(
        "redis",
        [proc],
        exports={"LIBERATOR_REDIS_URL": url},
        details={"port": str(port), "url": url},
        run_dir=run_dir,
    )

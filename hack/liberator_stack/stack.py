"""A set of running servers: start, restart, stop, and a state file for the command line."""

from __future__ import annotations

import importlib
import json
import os
import time
from pathlib import Path
from types import ModuleType

from liberator_stack.process import Proc, Say, Server, StackError, say_stderr

SERVER_NAMES = ("mongo", "pubsub", "redis", "kube", "cluster")
# `hack/stack up` with no names: the cluster needs root, so it is asked for by name.
DEFAULT_NAMES = ("mongo", "pubsub", "redis", "kube")
STATE_FILE = "stack.json"
NODE_CLIENTS = ("mongo", "pubsub", "redis")


def server_module(name: str) -> ModuleType:
    if name not in SERVER_NAMES:
        raise StackError(f"unknown server {name!r}; choose from {', '.join(SERVER_NAMES)}")
    return importlib.import_module(f"liberator_stack.{name}")


class Stack:
    """Servers started under one run directory. Usable as a context manager."""

    def __init__(self, run_dir: Path, say: Say = say_stderr) -> None:
        self.run_dir = run_dir
        self.say = say
        self.servers: dict[str, Server] = {}
        run_dir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def build(self, names: tuple[str, ...] = DEFAULT_NAMES) -> None:
        for name in names:
            server_module(name).build(self.say)

    def up(self, names: tuple[str, ...] = DEFAULT_NAMES) -> dict[str, str]:
        """Build what is missing, then start each named server that is not running yet.

        The cluster starts first: the others then listen on the node address too, for pods.
        """
        names = tuple(sorted(names, key=lambda n: n != "cluster"))
        self.build(names)
        try:
            for name in names:
                if name not in self.servers:
                    self.start(name)
        except BaseException:
            self.down()
            raise
        return self.exports()

    def start(self, name: str, port: int | None = None) -> Server:
        started = time.monotonic()
        if name in NODE_CLIENTS and "cluster" in self.servers:
            # Pods reach host servers at the node IP; only this stack's servers move there.
            server: Server = server_module(name).start(
                self.run_dir / name, port, host=self.servers["cluster"].details["node_ip"]
            )
        else:
            server = server_module(name).start(self.run_dir / name, port)
        self.servers[name] = server
        self.say(f"{name} ready in {time.monotonic() - started:.1f}s: {server.details}")
        return server

    def stop(self, name: str) -> None:
        server = self.servers.pop(name, None)
        if server is not None:
            server.stop()
            cleanup = getattr(server_module(name), "cleanup", None)
            if cleanup is not None:
                cleanup(self.say)

    def restart(self, name: str) -> Server:
        """Stop a server and start it again on the same port, with the same data directory."""
        server = self.servers[name]
        port = int(server.details["port"])
        self.stop(name)
        return self.start(name, port)

    def exports(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for server in self.servers.values():
            merged.update(server.exports)
        return merged

    def down(self) -> None:
        for name in reversed(list(self.servers)):
            self.stop(name)

    # -- the command line keeps servers running between invocations through a state file --

    def save(self) -> None:
        state = {
            name: {
                "exports": s.exports,
                "details": s.details,
                "procs": [{"name": p.name, "pid": p.pid, "log": str(p.log)} for p in s.procs],
            }
            for name, s in self.servers.items()
        }
        (self.run_dir / STATE_FILE).write_text(json.dumps(state, indent=2))

    @classmethod
    def load(cls, run_dir: Path, say: Say = say_stderr) -> Stack:
        stack = cls(run_dir, say)
        path = run_dir / STATE_FILE
        if path.exists():
            for name, entry in json.loads(path.read_text()).items():
                procs = [
                    Proc(p["name"], None, int(p["pid"]), Path(p["log"])) for p in entry["procs"]
                ]
                stack.servers[name] = Server(
                    name, procs, entry["exports"], entry["details"], run_dir / name
                )
        return stack

    def forget(self) -> None:
        (self.run_dir / STATE_FILE).unlink(missing_ok=True)


def default_run_dir() -> Path:
    root = Path(__file__).resolve().parents[2]
    return Path(os.environ.get("LIBERATOR_STACK_DIR", root / ".stack"))

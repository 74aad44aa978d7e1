"""The publishers ``python -m bench.peer`` measures, behind one small interface."""

from __future__ import annotations

from typing import Protocol

from bench import debezium
from bench.proc import poll
from bench.sidecar import Sidecar, SidecarEnv

__all__ = ["Debezium", "Liberator", "Subject"]


class Subject(Protocol):
    """A publisher under test: a process that can be started, stopped and watched."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def pid(self) -> int: ...
    def alive(self) -> None:
        """Raise when the process has exited."""


class Liberator:
    """``liberator publish`` (one replica) through bench/sidecar.py's helpers."""

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

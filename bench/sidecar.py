"""One ``liberator publish`` subprocess on the local stack, and the environment it runs in."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench.proc import cpu_seconds, rss_bytes
from liberator_stack.process import free_port

__all__ = ["LIBERATOR", "OUTBOX", "Sidecar", "SidecarEnv"]

LIBERATOR = Path(sys.executable).with_name("liberator")
OUTBOX = "quotes_outbox"


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

"""The publisher's processes and Pub/Sub, as tests drive them: ``liberator publish`` as a real
subprocess, a Pub/Sub topic with an ordered subscription, and a collector that pulls everything
that arrives.

Everything talks to the real local servers of hack/liberator_stack (MongoDB stand-in, Pub/Sub
emulator, Redis); nothing here is a mock. The fixtures that hand these out live in
tests/test_publisher/conftest.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.api_core.exceptions import AlreadyExists
from google.cloud import pubsub_v1
from pymongo import MongoClient

from liberator_publisher.state.checkpoint import CHECKPOINT_COLLECTION
from liberator_stack import Server
from liberator_stack.process import free_port
from tests.support.waiting import DEADLINE, eventually

__all__ = [
    "LIBERATOR",
    "OUTBOX",
    "Collector",
    "Publisher",
    "Received",
    "Sidecar",
    "Topic",
    "eventually",
    "running_publisher",
]

LIBERATOR = Path(sys.executable).with_name("liberator")
OUTBOX = "quotes.outbox"
"""The outbox of the tests' ``quotes`` collection: the default, ``<collection>.outbox``."""


@dataclass
class Sidecar:
    """One ``liberator publish`` process."""

    env: dict[str, str]
    log: Path
    args: list[str] = field(default_factory=list)
    popen: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return int(self.env["LIBERATOR_HTTP_PORT"])

    def start(self) -> Sidecar:
        out = self.log.open("ab")
        try:
            self.popen = subprocess.Popen(
                [str(LIBERATOR), "publish", *self.args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            out.close()
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def get(self, path: str) -> tuple[int, str]:
        """``(status, body)`` of an HTTP GET on the sidecar's port; ``(0, error)`` if down."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except OSError as error:
            return 0, str(error)

    def wait_ready(self, deadline: float = DEADLINE) -> Sidecar:
        def ready() -> bool:
            if not self.alive():
                raise AssertionError(
                    f"liberator publish exited ({self.exit_code()}):\n{self.output()}"
                )
            return self.get("/readyz")[0] == 200

        eventually(ready, what="liberator publish ready", deadline=deadline)
        return self

    def is_leader(self) -> bool:
        return self.metric("liberator_leader") == 1.0

    def metric(self, name: str, labels: str = "") -> float | None:
        """A sample's value from ``/metrics`` (``labels`` as in the exposition, e.g.
        ``stage="relay"``), or None."""
        status, body = self.get("/metrics")
        if status != 200:
            return None
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in body.splitlines():
            if line.startswith("#"):
                continue
            sample, _, value = line.rpartition(" ")
            if sample == wanted:
                return float(value)
        return None

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(timeout=30)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; returns the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.signal(signal.SIGCONT)  # in case a test left it stopped
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.returncode

    def exit_code(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines (LIBERATOR_LOG_FORMAT=json)."""
        lines = []
        for line in self.output().splitlines():
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict):
                    lines.append(value)
        return lines


@dataclass
class Topic:
    """A topic with one ordered subscription on the Pub/Sub emulator."""

    project: str
    topic_id: str
    subscription_id: str

    @property
    def topic_path(self) -> str:
        return f"projects/{self.project}/topics/{self.topic_id}"

    @property
    def subscription_path(self) -> str:
        return f"projects/{self.project}/subscriptions/{self.subscription_id}"

    def create(self) -> Topic:
        """Create both (idempotent: the emulator forgets them when it restarts)."""
        publisher = pubsub_v1.PublisherClient()
        with contextlib.suppress(AlreadyExists):
            publisher.create_topic(name=self.topic_path)
        subscriber = pubsub_v1.SubscriberClient()
        with subscriber, contextlib.suppress(AlreadyExists):
            subscriber.create_subscription(
                request={
                    "name": self.subscription_path,
                    "topic": self.topic_path,
                    "enable_message_ordering": True,
                    "ack_deadline_seconds": 60,
                }
            )
        return self


@dataclass(frozen=True)
class Received:
    """One delivered message."""

    attributes: dict[str, str]
    data: bytes
    ordering_key: str

    @property
    def ce_id(self) -> str:
        return self.attributes["ce-id"]

    def json(self) -> dict[str, Any]:
        value = json.loads(self.data)
        assert isinstance(value, dict)
        return value


class Collector:
    """Pulls a subscription in a thread, acking everything, and keeps what arrived in order."""

    def __init__(self, topic: Topic) -> None:
        self.topic = topic
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._client = pubsub_v1.SubscriberClient()
        self._thread = threading.Thread(target=self._pull, daemon=True)
        self._thread.start()

    def _pull(self) -> None:
        while not self._stop.is_set():
            try:
                response = self._client.pull(
                    request={"subscription": self.topic.subscription_path, "max_messages": 1000},
                    timeout=2,
                )
            except Exception:  # emulator restarting, subscription recreated: try again
                time.sleep(0.2)
                continue
            if not response.received_messages:
                continue
            with self._lock:
                for item in response.received_messages:
                    m = item.message
                    self.messages.append(
                        Received(dict(m.attributes), bytes(m.data), m.ordering_key)
                    )
            with contextlib.suppress(Exception):
                self._client.acknowledge(
                    request={
                        "subscription": self.topic.subscription_path,
                        "ack_ids": [item.ack_id for item in response.received_messages],
                    }
                )

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.messages)

    def ids(self) -> set[str]:
        return {m.ce_id for m in self.snapshot()}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._client.close()


@dataclass
class Publisher:
    """Everything one test needs: env for sidecars, the topic, the collections."""

    env: dict[str, str]
    topic: Topic
    run_dir: Path
    sidecars: list[Sidecar] = field(default_factory=list)

    @property
    def database(self) -> str:
        return self.env["LIBERATOR_DATABASE"]

    @property
    def collection(self) -> str:
        return self.env["LIBERATOR_COLLECTION"]

    @property
    def outbox(self) -> str:
        return self.env.get("LIBERATOR_OUTBOX_COLLECTION", f"{self.collection}.outbox")

    @property
    def name(self) -> str:
        return self.env["LIBERATOR_PUBLISHER"]

    def sidecar(self, *args: str, **overrides: str) -> Sidecar:
        """A new (not yet started) sidecar on its own HTTP port."""
        n = len(self.sidecars)
        env = {
            **self.env,
            "LIBERATOR_HTTP_PORT": str(free_port()),
            "LIBERATOR_POD_NAME": f"pod-{n}",
            **overrides,
        }
        car = Sidecar(env, self.run_dir / f"sidecar-{n}.log", list(args))
        self.sidecars.append(car)
        return car

    def start(self, *args: str, **overrides: str) -> Sidecar:
        """Start a sidecar and wait until it is ready and some replica captures.

        Ready does not mean capturing (standbys are ready too), and a first start captures from
        the position where its stream opened: changes made before that are the seed's job.
        """
        car = self.sidecar(*args, **overrides).start().wait_ready()
        eventually(self.capturing, what="a replica captures (start position saved)")
        return car

    def capturing(self) -> bool:
        """Whether the capture checkpoint holds a position (saved as soon as capture runs)."""
        with MongoClient(self.env["LIBERATOR_MONGO_URI"]) as client:
            found = client[self.database][CHECKPOINT_COLLECTION].find_one(
                {"_id": f"{self.name}#capture"}
            )
        return bool(found and (found.get("token") or found.get("operationTime")))


@contextlib.contextmanager
def running_publisher(
    mongo_uri: str, pubsub: Server, redis_url: str, unique: str, run_dir: Path
) -> Iterator[Publisher]:
    """A fresh publisher (database, topic, lease keys) on these servers; its sidecars are
    stopped at the end."""
    project = pubsub.exports["LIBERATOR_PUBSUB_PROJECT"]
    topic = Topic(project, f"events-{unique}", f"sub-{unique}").create()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", ""),
        "LIBERATOR_MONGO_URI": mongo_uri,
        "LIBERATOR_DATABASE": f"db_{unique}",
        "LIBERATOR_COLLECTION": "quotes",
        "LIBERATOR_ENTITY_TYPE": "quote",
        "LIBERATOR_PUBSUB_PROJECT": project,
        "LIBERATOR_TOPIC": topic.topic_id,
        "LIBERATOR_REDIS_URL": redis_url,
        "PUBSUB_EMULATOR_HOST": pubsub.exports["PUBSUB_EMULATOR_HOST"],
        "LIBERATOR_PUBLISHER": f"test/{unique}",
        "LIBERATOR_LEASE_TTL_SECONDS": "3",
        "LIBERATOR_LOG_FORMAT": "json",
        "LIBERATOR_MAX_AWAIT_MS": "200",
    }
    p = Publisher(env, topic, run_dir)
    try:
        yield p
    finally:
        for car in p.sidecars:
            car.stop(timeout=15)

"""The demo's run: its state, its transcript, and its view of the cluster and the event store.

Every step prints as it goes (``flush=True``: the transcript interleaves with kubectl's and the
stack's output); a step that fails raises :class:`DemoError` naming what to look at. Waits give up
after :data:`WAIT` seconds with the last error seen.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from pymongo import MongoClient

from liberator_stack import Stack, StackError, apps, deploy
from liberator_stack.stack import default_run_dir

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart"
NAMESPACE = "quotes"
PUBLISHER = "quotes"
EVENTS_DB = "liberator"
STEPS = 9
WAIT = 300.0  # generous: a noisy 2-core machine


class DemoError(RuntimeError):
    """A step failed; the message says which and shows what to look at."""


class Session:
    """One run of the demo: its stack, the cluster's kubeconfig and the servers' settings, which
    step runs, and which events the live view has shown."""

    def __init__(self, quotes: int, interactive: bool) -> None:
        self.quotes = quotes
        self.interactive = interactive
        self.run_dir = default_run_dir()
        self.stack = Stack(self.run_dir, say=lambda m: print(f"      {m}", flush=True))
        self.kubeconfig = ""
        self.env: dict[str, str] = {}
        self.step_name = "start"
        self.started = time.monotonic()
        self.shown: set[str] = set()  # ce-ids the live view printed

    # -- plumbing --

    def step(self, number: int, text: str) -> None:
        self.step_name = f"step {number}/{STEPS}: {text}"
        print(f"\n[{number}/{STEPS}] {text}  (+{time.monotonic() - self.started:.0f}s)", flush=True)

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 120) -> str:
        try:
            return deploy.kubectl(self.kubeconfig, *args, stdin=stdin, timeout=timeout)
        except StackError as error:
            raise DemoError(str(error)) from None

    def show(self, *args: str) -> None:
        """Run kubectl and print its output as a transcript."""
        print(f"      $ kubectl {' '.join(args)}", flush=True)
        for line in self.kubectl(*args).rstrip().splitlines():
            print(f"        {line}", flush=True)

    def kube_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json"))

    @contextlib.contextmanager
    def progress(self, what: str, every: float = 15.0) -> Iterator[None]:
        """A line every ``every`` seconds while a long step runs."""
        done = threading.Event()
        started = time.monotonic()

        def tick() -> None:
            while not done.wait(every):
                print(f"      ... {what} ({time.monotonic() - started:.0f}s)", flush=True)

        thread = threading.Thread(target=tick, daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(timeout=2)

    def wait(self, what: str, check: Callable[[], T | None], timeout: float = WAIT) -> T:
        deadline = time.monotonic() + timeout
        last_error = ""
        with self.progress(f"waiting for {what}"):
            while time.monotonic() < deadline:
                try:
                    value = check()
                except Exception as error:  # not there yet; say why if it never comes
                    last_error = str(error)
                    value = None
                if value:
                    return value
                time.sleep(1)
        raise DemoError(
            f"timed out after {timeout:.0f}s waiting for {what}"
            f"{f' (last error: {last_error})' if last_error else ''}"
        )

    def mongo(self) -> MongoClient[dict[str, Any]]:
        return MongoClient(self.env["LIBERATOR_MONGO_URI"])

    def publisher_status(self) -> dict[str, Any]:
        body = self.kube_json("-n", NAMESPACE, "get", "entitypublisher", PUBLISHER)
        return dict(body.get("status") or {})

    def app_pods(self) -> list[dict[str, Any]]:
        return apps.live(
            self.kube_json("-n", NAMESPACE, "get", "pods", "-l", "app=quotes-service")["items"]
        )

    def leader(self, other_than: str | None = None) -> str:
        def current() -> str | None:
            lead = self.publisher_status().get("leader")
            names = {p["metadata"]["name"] for p in self.app_pods()}
            return lead if lead in names and lead != other_than else None

        return self.wait(
            "a leading sidecar" + (f" other than {other_than}" if other_than else ""), current
        )

    def live_view(
        self,
        client: MongoClient[dict[str, Any]],
        done: Callable[[set[tuple[str, str]]], bool],
        what: str,
        timeout: float = WAIT,
        seed: bool = False,
    ) -> None:
        """Print each event the event store holds and this view has not shown, until ``done``
        holds for the (type, subject) pairs stored. Latency: publish to the store's receipt."""
        events = client[EVENTS_DB]["liberator_events"]
        query = {"attributes.ce-seed": "true" if seed else {"$exists": False}}
        deadline = time.monotonic() + timeout
        while True:
            seen: set[tuple[str, str]] = set()
            for event in events.find(query).sort("receivedAt", 1):
                seen.add((event["type"], event["subject"]))
                if event["_id"] in self.shown:
                    continue
                self.shown.add(event["_id"])
                start = event.get("publishTime") or event["time"]
                latency = (event["receivedAt"] - start).total_seconds()
                version = event["attributes"].get("ce-entityversion", "-")
                print(
                    f"      {event['type']:<18} {event['subject']:<35} {version:>7} "
                    f"{latency * 1000:>6.0f}ms  {event['_id'][:8]}",
                    flush=True,
                )
            if done(seen):
                return
            if time.monotonic() > deadline:
                raise DemoError(
                    f"{what} did not all reach the event store in {timeout:.0f}s; "
                    f"look at: kubectl -n {NAMESPACE} logs -l app=quotes-service "
                    f"-c liberator-{PUBLISHER}, and kubectl -n {deploy.NAMESPACE} "
                    f"logs deploy/{deploy.EVENTSTORE}"
                )
            time.sleep(0.5)

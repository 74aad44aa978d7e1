"""``make demo``: the whole of Liberator on the local single-node cluster (needs root).

Steps: bring up the node (docs/cluster.md) with MongoDB, the Pub/Sub emulator and Redis on its
IP; install Liberator from deploy/overlays/local (2 operator replicas, the webhook behind its
Service, the event store); apply examples/quickstart; run the ``quotes-service`` Deployment (2
pods of examples/quotes_app.py, each with the injected native sidecar); show the events the event
store receives from anyone; delete the leading pod and count that no event is lost; seed through
a real Job; print the status.

Interactive (a terminal on stdin): keeps the live view running until Ctrl-C, which stops
everything (the node goes down) and exits 0. Otherwise, or with ``DEMO_NONINTERACTIVE=1``, it
exits after the status: 0 when every expected event arrived. ``DEMO_QUOTES`` sets how many quotes
the demo itself writes (default 6); the app pods write theirs besides.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from bson.decimal128 import Decimal128
from pymongo import MongoClient

from liberator_stack import Stack, StackError, apps, deploy, host
from liberator_stack.stack import SERVER_NAMES, default_run_dir

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart"
APP_SOURCE = ROOT / "examples" / "quotes_app.py"
NAMESPACE = "quotes"
PUBLISHER = "quotes"
SEED = "quotes-initial"
EVENTS_DB = "liberator"
STEPS = 9
WAIT = 300.0  # generous: a noisy 2-core machine
# The app pods' pace: slow and bounded (examples/quotes_app.py).
APP_INTERVAL_SECONDS = "3"
APP_MAX_QUOTES = "15"


class DemoError(RuntimeError):
    """A step failed; the message says which and shows what to look at."""


class Demo:
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

    # -- the steps --

    def bring_up_node(self) -> None:
        self.step(
            1,
            "bringing up the local node: etcd, kube-apiserver, controller manager, "
            "scheduler, kube-proxy, kubelet on containerd; MongoDB (mongo-java-server), "
            "the Pub/Sub emulator and Redis on the node IP",
        )
        with self.progress(
            "bringing up the node (a first run builds it: about 10 minutes)", every=30
        ):
            self.kubeconfig = deploy.local_node(self.stack)
        self.env = {**self.stack.exports(), "KUBECONFIG": self.kubeconfig}
        self.stack.save()  # hack/stack status and env see this stack
        self.show("get", "nodes")

    def install_liberator(self) -> None:
        self.step(
            2,
            "installing Liberator from deploy/overlays/local: 2 operator replicas "
            "(kopf peering), the webhook behind its Service",
        )
        print(
            "      certificate: a CA of our own signs the webhook Service's serving Secret and "
            "goes into the caBundle (no cert-manager on an offline node)",
            flush=True,
        )
        with self.progress("waiting for the operator rollout"):
            deploy.install(self.kubeconfig, self.env, operator_replicas=2, timeout=WAIT)
        self.show("-n", deploy.NAMESPACE, "get", "pods,services")

    def apply_quickstart(self) -> None:
        self.step(
            3,
            "applying examples/quickstart: namespace, Secrets (pointed at this "
            "stack's MongoDB and Redis), EntityPublisher 'quotes'; the event store",
        )
        self.kubectl("apply", "-f", str(QUICKSTART / "00-namespace.yaml"))
        secrets = [d for d in yaml.safe_load_all((QUICKSTART / "10-secrets.yaml").read_text()) if d]
        values = {
            "quotes-mongo": {"uri": self.env["LIBERATOR_MONGO_URI"]},
            "liberator-redis": {"url": self.env["LIBERATOR_REDIS_URL"]},
        }
        for secret in secrets:
            secret["stringData"] = values[secret["metadata"]["name"]]
        self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(secrets))
        self.kubectl("apply", "-f", str(QUICKSTART / "20-entitypublisher.yaml"))
        self.wait(
            "EntityPublisher quotes Ready (topics and subscriptions provisioned)",
            lambda: any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in self.publisher_status().get("conditions", [])
            ),
        )
        print(
            "      EntityPublisher quotes: Ready; now the event store, a Deployment reading "
            "the subscriptions it declares",
            flush=True,
        )
        with self.progress("waiting for the event store rollout"):
            deploy.install_eventstore(self.kubeconfig, self.env, timeout=WAIT)
        self.show("-n", deploy.NAMESPACE, "get", "deployments")

    def run_app(self) -> str:
        self.step(
            4,
            "the quotes-service Deployment: 2 pods of examples/quotes_app.py (pymongo, "
            "a quote every 3 s) in the project image; the webhook injects the sidecar",
        )
        template = yaml.safe_load((QUICKSTART / "30-quotes-service.yaml").read_text())
        labels = template["spec"]["selector"]["matchLabels"]
        self.kubectl(
            "-n",
            NAMESPACE,
            "create",
            "configmap",
            "quotes-app",
            f"--from-file=quotes_app.py={APP_SOURCE}",
        )
        deployment = apps.app_deployment(
            template["metadata"]["name"],
            NAMESPACE,
            labels=labels,
            replicas=template["spec"]["replicas"],
            command=["python3", "/app/quotes_app.py"],
            env=[
                {
                    "name": "MONGO_URI",
                    "valueFrom": {"secretKeyRef": {"name": "quotes-mongo", "key": "uri"}},
                },
                {"name": "QUOTES_INTERVAL_SECONDS", "value": APP_INTERVAL_SECONDS},
                {"name": "QUOTES_MAX", "value": APP_MAX_QUOTES},
            ],
            volumes=[{"name": "app", "configMap": {"name": "quotes-app"}}],
            mounts=[{"name": "app", "mountPath": "/app", "readOnly": True}],
        )
        self.kubectl("apply", "-f", "-", stdin=json.dumps(deployment))
        with self.progress("waiting for the quotes-service rollout"):
            self.kubectl(
                "-n",
                NAMESPACE,
                "rollout",
                "status",
                "deployment/quotes-service",
                f"--timeout={int(WAIT)}s",
                timeout=WAIT + 30,
            )
        pods = self.wait(
            "2 quotes-service pods with app and sidecar Ready",
            lambda: (
                p
                if len(p := self.app_pods()) == 2
                and all(apps.pod_ready(x) and len(apps.sidecars(x)) == 1 for x in p)
                else None
            ),
        )
        sidecar = apps.sidecars(pods[0])[0]
        native = (
            sidecar in pods[0]["spec"].get("initContainers", [])
            and sidecar.get("restartPolicy") == "Always"
        )
        print(
            f"      webhook injected '{sidecar['name']}' into each pod"
            f"{' as a native sidecar (init container, restartPolicy: Always)' if native else ''}",
            flush=True,
        )
        self.show("-n", NAMESPACE, "get", "pods", "-o", "wide")
        leader = self.leader()
        print(f"      one sidecar leads: {leader} (EntityPublisher status.leader)", flush=True)
        self.show("-n", NAMESPACE, "logs", leader, "-c", sidecar["name"], "--tail=8")
        return str(sidecar["name"])

    def leader(self, other_than: str | None = None) -> str:
        def current() -> str | None:
            lead = self.publisher_status().get("leader")
            names = {p["metadata"]["name"] for p in self.app_pods()}
            return lead if lead in names and lead != other_than else None

        return self.wait(
            "a leading sidecar" + (f" other than {other_than}" if other_than else ""), current
        )

    def write_quotes(self) -> None:
        self.step(
            5,
            f"the demo writes {self.quotes} quotes and their changes with pymongo; the "
            "live view shows every event the event store receives, from anyone",
        )
        client = self.mongo()
        quotes = client["quotes"]["quotes"]
        expected: list[tuple[str, str]] = []
        ids = [f"Q-{1001 + i}" for i in range(self.quotes)]
        for i, quote_id in enumerate(ids):
            quotes.insert_one(
                {
                    "_id": quote_id,
                    "version": 1,
                    "customer": f"ACME-{i % 3}",
                    "amount": Decimal128(f"{1250 + 10 * i}.00"),
                    "currency": "EUR",
                    "status": "draft",
                    "internalNotes": "never published",
                    "createdAt": dt.datetime.now(dt.UTC),
                }
            )
            expected.append(("quote.created", quote_id))
        quotes.update_one(
            {"_id": ids[0]}, {"$set": {"amount": Decimal128("1190.00"), "version": 2}}
        )
        expected.append(("quote.updated", ids[0]))
        # The service names the business event in the document's _event field.
        quotes.update_one(
            {"_id": ids[1]},
            {
                "$set": {
                    "status": "purchased",
                    "version": 2,
                    "_event": {"type": "quote.purchased", "correlationId": "order-77"},
                }
            },
        )
        expected.append(("quote.purchased", ids[1]))
        quotes.update_one({"_id": ids[2]}, {"$set": {"status": "sent", "version": 2}})
        expected.append(("quote.updated", ids[2]))
        quotes.delete_one({"_id": ids[-1]})
        expected.append(("quote.deleted", ids[-1]))
        print(
            f"      {'type':<18} {'subject':<35} {'version':>7} {'latency':>8}  ce-id", flush=True
        )
        self.live_view(client, lambda seen: set(expected) <= seen, "the demo's events")
        print(f"      all {len(expected)} of the demo's events stored", flush=True)
        client.close()

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

    def take_over(self) -> None:
        self.step(
            6, "deleting the leading pod: the other pod's sidecar takes over, and no event is lost"
        )
        old = self.leader()
        client = self.mongo()
        quotes = client["quotes"]["quotes"]
        during = [f"T-{i:02d}" for i in range(10)]
        quotes.insert_many([{"_id": i, "version": 1, "status": "draft"} for i in during[:5]])
        started = time.monotonic()
        self.kubectl("-n", NAMESPACE, "delete", "pod", old, "--wait=false")
        print(f"      $ kubectl -n {NAMESPACE} delete pod {old}", flush=True)
        quotes.insert_many([{"_id": i, "version": 1, "status": "draft"} for i in during[5:]])
        new = self.leader(other_than=old)
        print(
            f"      the lead moved from {old} to {new} "
            f"{time.monotonic() - started:.1f}s after the delete",
            flush=True,
        )
        # Every quote ever inserted (by the app pods, the demo, now) has one created event.
        inserted = {d["_id"] for d in quotes.find({}, {"_id": 1})} | {f"Q-{1000 + self.quotes}"}
        self.live_view(
            client,
            lambda seen: inserted <= {s for t, s in seen if t == "quote.created"},
            "the created events of every quote",
        )
        events = client[EVENTS_DB]["liberator_events"]
        live = {"attributes.ce-seed": {"$exists": False}}
        created = set(events.distinct("subject", {**live, "type": "quote.created"}))
        distinct = len(events.distinct("_id", live))
        lost = inserted - created
        if lost:
            raise DemoError(f"events lost in the takeover: {sorted(lost)}")
        print(
            f"      {len(inserted)} quotes inserted so far (app pods, the demo, 10 around the "
            f"delete): {len(inserted & created)} distinct quote.created events in the event "
            f"store, none lost ({distinct} distinct events in all)",
            flush=True,
        )
        client.close()

    def seed(self) -> None:
        self.step(
            7,
            "applying EventSeed 'quotes-initial': the operator makes a Job, the Job "
            "controller runs it to Complete, every existing quote goes once to the "
            "seed topic",
        )
        client = self.mongo()
        existing = {d["_id"] for d in client["quotes"]["quotes"].find({}, {"_id": 1})}
        self.kubectl("apply", "-f", str(QUICKSTART / "40-eventseed.yaml"))
        job = self.wait(
            "the seed Job",
            lambda: (
                self.kube_json("-n", NAMESPACE, "get", "eventseed", SEED)
                .get("status", {})
                .get("job")
            ),
            60,
        )
        print(f"      the operator created Job {job}", flush=True)
        last = ""
        deadline = time.monotonic() + WAIT
        with self.progress("waiting for the seed Job"):
            while time.monotonic() < deadline:
                status = self.kube_json("-n", NAMESPACE, "get", "eventseed", SEED).get("status", {})
                job_status = self.kube_json("-n", NAMESPACE, "get", "job", job).get("status", {})
                line = (
                    f"EventSeed phase={status.get('phase')} seeded={status.get('seeded', 0)}"
                    f"; Job active={job_status.get('active', 0)} "
                    f"succeeded={job_status.get('succeeded', 0)}"
                )
                if line != last:
                    print(f"      {line}", flush=True)
                    last = line
                if status.get("phase") in ("Succeeded", "Failed"):
                    break
                time.sleep(1)
        if status.get("phase") != "Succeeded":
            raise DemoError(
                f"EventSeed {SEED} is {status.get('phase')}: kubectl -n "
                f"{NAMESPACE} describe eventseed {SEED}; kubectl -n {NAMESPACE} "
                f"logs job/{job}"
            )
        conditions = {c["type"]: c["status"] for c in job_status.get("conditions", [])}
        if conditions.get("Complete") != "True":
            raise DemoError(f"EventSeed Succeeded but Job {job} is not Complete: {job_status}")
        print(
            f"      EventSeed {SEED}: phase=Succeeded seeded={status.get('seeded')}, from "
            f"Job {job}: Complete (the Job controller's condition)",
            flush=True,
        )
        self.show("-n", NAMESPACE, "get", "job", job)
        self.live_view(
            client, lambda seen: existing <= {s for _, s in seen}, "the seeded events", seed=True
        )
        print(f"      all {len(existing)} quotes that existed seeded", flush=True)
        client.close()

    def show_status(self) -> None:
        self.step(8, "status, as a platform engineer sees it")
        self.show("get", "entitypublishers,eventseeds", "-A")
        # The conditions behind STATUS, one a line (kubectl describe shows them too).
        self.show(
            "-n",
            NAMESPACE,
            "get",
            "entitypublisher",
            PUBLISHER,
            "-o",
            "jsonpath={range .status.conditions[*]}{.type}{'\\t'}{.status}{'\\t'}"
            "{.reason}{'\\t'}{.message}{'\\n'}{end}",
        )
        print("      $ hack/stack status", flush=True)
        out = subprocess.run(
            [str(ROOT / "hack" / "stack"), "status"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        for line in (out.stdout + out.stderr).rstrip().splitlines():
            print(f"        {line}", flush=True)
        print(
            "  Where to look next:\n"
            f'    export KUBECONFIG={self.kubeconfig}   (or: eval "$(hack/stack env)")\n'
            f"    kubectl -n {NAMESPACE} get entitypublisher {PUBLISHER} -o yaml   # conditions,"
            " leader\n"
            f"    kubectl -n {NAMESPACE} logs -l app=quotes-service -c liberator-{PUBLISHER}\n"
            "    docs/cluster.md, docs/architecture.md, docs/operator.md",
            flush=True,
        )

    def hold(self) -> None:
        self.step(
            9, "running: the live view goes on (the app pods keep writing); Ctrl-C stops everything"
        )
        with contextlib.suppress(KeyboardInterrupt):
            client = self.mongo()
            while True:
                self.live_view(client, lambda seen: False, "", timeout=float("inf"))

    def forget_earlier_run(self) -> None:
        """Start from empty servers: an earlier demo's MongoDB still holds its quotes (the
        stand-in keeps its file), and the demo writes the same ids again."""
        earlier = [name for name in SERVER_NAMES if (self.run_dir / name).exists()]
        if earlier:
            print(
                f"      an earlier run's data and logs in {self.run_dir} ({', '.join(earlier)}) "
                "are removed: the demo starts from empty servers",
                flush=True,
            )
        for name in earlier:
            shutil.rmtree(self.run_dir / name)

    def run(self) -> int:
        code = 0
        try:
            running = Stack.load(self.run_dir).servers
            if running:
                raise DemoError(
                    f"a stack runs from {self.run_dir} ({', '.join(running)}): "
                    "hack/stack down first"
                )
            if host.leftovers():
                raise DemoError("a local node runs already (hack/stack down first)")
            self.forget_earlier_run()
            self.bring_up_node()
            self.install_liberator()
            self.apply_quickstart()
            self.run_app()
            self.write_quotes()
            self.take_over()
            self.seed()
            self.show_status()
            if self.interactive:
                self.hold()
                print("\n[demo] Ctrl-C: stopping", flush=True)
            else:
                print("\n[demo] every expected event arrived (non-interactive)", flush=True)
        except KeyboardInterrupt:
            print(f"\n[demo] Ctrl-C at {self.step_name}: stopping", flush=True)
        except (DemoError, StackError) as error:
            print(f"\n[demo] FAILED at {self.step_name}\n{error}", file=sys.stderr, flush=True)
            code = 1
        finally:
            print("[demo] bringing the node down", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                self.stack.down()
                self.stack.forget()
            print(f"[demo] total {time.monotonic() - self.started:.0f}s", flush=True)
        return code


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> int:
    interactive = sys.stdin.isatty() and os.environ.get("DEMO_NONINTERACTIVE", "") != "1"
    try:
        quotes = int(os.environ.get("DEMO_QUOTES", "6"))
    except ValueError:
        print(
            f"DEMO_QUOTES={os.environ['DEMO_QUOTES']!r} is not a number: set it to a whole "
            "number of at least 4, or unset it for 6",
            file=sys.stderr,
        )
        return 2
    if quotes < 4:
        print(
            "DEMO_QUOTES must be at least 4 (the demo updates, purchases and deletes quotes)",
            file=sys.stderr,
        )
        return 2
    problem = host.missing_privileges()
    if problem:
        print(
            problem.replace(
                "up cluster needs", "make demo runs a Kubernetes node here and needs"
            ).replace("hack/stack up cluster", "make demo"),
            file=sys.stderr,
        )
        return 1
    with sigterm_as_interrupt():
        return Demo(quotes, interactive).run()


if __name__ == "__main__":
    sys.exit(main())

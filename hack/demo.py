"""``make demo``: the whole of Liberator on a local stack, as plain processes on loopback.

Steps: bring up the stack, apply crds/, start the operator, apply examples/quickstart, run the
injected sidecar, write quotes, show the events the event store receives, seed, print status.
There is no kubelet here, so the demo itself runs what a kubelet would: the sidecar container the
webhook injected and the container of the seed Job, each as a local process with the command and
environment of its spec.

Interactive (a terminal on stdin): keeps running until Ctrl-C. Otherwise, or with
``DEMO_NONINTERACTIVE=1``, it exits after the status, 0 when every expected event arrived.
``DEMO_QUOTES`` sets how many quotes it writes (default 6).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from bson.decimal128 import Decimal128
from pymongo import MongoClient

from localstack import Stack, StackError, cache_dir
from localstack.process import Proc, free_port, log_tail, spawn

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
LIBERATOR = str(VENV_BIN / "liberator")
NAMESPACE = "quotes"
PUBLISHER = "quotes"
SEED = "quotes-initial"
EVENTS_DB = "liberator"
STEPS = 9


class DemoError(RuntimeError):
    """A step failed; the message says which and shows the relevant log."""


class Demo:
    def __init__(self, quotes: int, interactive: bool) -> None:
        self.quotes = quotes
        self.interactive = interactive
        self.run_dir = Path(os.environ.get("LIBERATOR_STACK_DIR", ROOT / ".stack")) / "demo"
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.stack = Stack(self.run_dir, say=lambda m: print(f"      {m}", flush=True))
        self.procs: dict[str, Proc] = {}
        self.env: dict[str, str] = {}
        self.step_name = "start"
        self.started = time.monotonic()

    # -- plumbing --

    def step(self, number: int, text: str) -> None:
        self.step_name = f"step {number}/{STEPS}: {text}"
        print(f"\n[{number}/{STEPS}] {text}  (+{time.monotonic() - self.started:.0f}s)",
              flush=True)

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True,
                                env={**os.environ, **self.env}, check=False, timeout=60)
        if result.returncode != 0:
            raise DemoError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def kube_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json"))

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        proc = spawn(name, argv, self.run_dir / "logs" / f"{name}.log",
                     env={**os.environ, **self.env, **env}, cwd=ROOT)
        self.procs[name] = proc
        return proc

    def wait(self, what: str, check: Callable[[], Any], timeout: float,
             logs: tuple[str, ...] = ()) -> Any:
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            for name in logs:
                proc = self.procs[name]
                if not proc.alive():
                    raise DemoError(f"{name} exited while waiting for {what}; its log:\n"
                                    f"{log_tail(proc.log, 30)}")
            try:
                value = check()
            except Exception as error:  # the thing is not there yet; say why if it never comes
                last_error = str(error)
                value = None
            if value:
                return value
            time.sleep(0.5)
        tails = "\n".join(f"--- {n} log:\n{log_tail(self.procs[n].log, 30)}" for n in logs)
        raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}"
                        f"{f' (last error: {last_error})' if last_error else ''}\n{tails}")

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()
        self.procs.clear()
        self.stack.down()

    # -- the steps --

    def bring_up_stack(self) -> None:
        self.step(1, "bringing up the local stack: kube-apiserver + etcd, MongoDB (mongo-java-"
                     "server), Pub/Sub emulator, Redis")
        if not kube_binary_cached():
            print("      first run: building kube-apiserver from the Go module proxy and "
                  "fetching mongo-java-server (about 10 minutes on 2 cores, once)", flush=True)
        self.env = self.stack.up()
        self.env["KUBECONFIG"] = self.stack.servers["kube"].exports["KUBECONFIG"]

    def apply_crds(self) -> None:
        self.step(2, "applying crds/ (EntityPublisher, EventSeed)")
        self.kubectl("apply", "-f", str(ROOT / "crds"))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                     "crd/entitypublishers.liberator.io", "crd/eventseeds.liberator.io")
        # The API server publishes the schema a moment after the CRD is Established.
        explained = self.wait("the CRD schema in the API server's OpenAPI", lambda: self.kubectl(
            "explain", "entitypublisher.spec.deletionPolicy"), 30).splitlines()
        print("      $ kubectl explain entitypublisher.spec.deletionPolicy", flush=True)
        for line in [line for line in explained if line.strip()][3:7]:
            print(f"        {line.strip()}", flush=True)

    def start_operator(self) -> None:
        self.step(3, "starting the operator (kopf) with its mutating webhook on loopback")
        self.kubectl("create", "namespace", "liberator-system")
        port = free_port()
        self.spawn("operator", [LIBERATOR, "operator", "--standalone", "--webhook-addr",
                                "127.0.0.1", "--webhook-port", str(port),
                                "--webhook-configure", "liberator-demo"],
                   {"LIBERATOR_OPERATOR_STATUS_INTERVAL": "2",
                    "LIBERATOR_OPERATOR_SEED_INTERVAL": "1",
                    "LIBERATOR_OPERATOR_IMAGE": "ghcr.io/liberator-io/liberator:0.1.0"})
        self.wait("the webhook configuration", lambda: self.kubectl(
            "get", "mutatingwebhookconfiguration", "liberator-demo", "-o", "name"), 60,
            logs=("operator",))
        print(f"      operator running; webhook https://127.0.0.1:{port}", flush=True)

    def apply_examples(self) -> dict[str, Any]:
        self.step(4, "applying examples/quickstart: namespace, secrets, EntityPublisher "
                     "'quotes', the quotes-service Pod")
        quickstart = ROOT / "examples" / "quickstart"
        self.kubectl("apply", "-f", str(quickstart / "00-namespace.yaml"))
        self.kubectl("apply", "-f", str(quickstart / "10-secrets.yaml"))
        # The examples hold in-cluster addresses; point the secrets at the local stack.
        for name, key, value in (("quotes-mongo", "uri", self.env["LIBERATOR_MONGO_URI"]),
                                 ("liberator-redis", "url", self.env["LIBERATOR_REDIS_URL"])):
            encoded = base64.b64encode(value.encode()).decode()
            self.kubectl("-n", NAMESPACE, "patch", "secret", name, "--type=merge", "-p",
                         json.dumps({"data": {key: encoded}}))
        self.kubectl("apply", "-f", str(quickstart / "20-entitypublisher.yaml"))
        self.wait("EntityPublisher quotes to be Ready (topics and subscriptions provisioned)",
                  lambda: condition(self.kube_json("-n", NAMESPACE, "get", "entitypublisher",
                                                   PUBLISHER), "Ready") == "True", 90,
                  logs=("operator",))
        # This stack's API server has no controllers (docs/cluster.md has a real node): one Pod
        # from the quickstart Deployment's template shows what its ReplicaSet would create.
        deployment = yaml.safe_load((quickstart / "30-quotes-service.yaml").read_text())
        template = deployment["spec"]["template"]
        self.kubectl("apply", "-f", "-", stdin=json.dumps({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {**template["metadata"], "name": "quotes-service",
                         "namespace": NAMESPACE},
            "spec": template["spec"]}))
        pod: dict[str, Any] = self.kube_json("-n", NAMESPACE, "get", "pod", "quotes-service")
        sidecar = injected_sidecar(pod)
        if sidecar is None:
            raise DemoError("the quotes-service Pod was created without the sidecar; operator "
                            f"log:\n{log_tail(self.procs['operator'].log, 30)}")
        where = "initContainers (native sidecar)" if sidecar in pod["spec"].get(
            "initContainers", []) else "containers"
        injected = pod["metadata"]["annotations"].get("liberator.io/injected")
        print(f"      webhook injected '{sidecar['name']}' into {where}; "
              f"annotation liberator.io/injected={injected}", flush=True)
        return pod

    def run_sidecar_and_store(self, pod: dict[str, Any]) -> None:
        self.step(5, "running the injected sidecar and the event store")
        print("      (no kubelet here: the demo starts the sidecar itself, with the command and "
              "environment of the injected container spec, as a local process)", flush=True)
        sidecar = injected_sidecar(pod)
        assert sidecar is not None
        env = self.resolve_env(sidecar, pod)
        port = free_port()
        print(f"      its HTTP port {env.get('LIBERATOR_HTTP_PORT', '8099')} is remapped to "
              f"127.0.0.1:{port} so it cannot clash with anything on this machine", flush=True)
        env["LIBERATOR_HTTP_PORT"] = str(port)
        self.sidecar_port = port
        self.spawn("sidecar", [LIBERATOR if a == "liberator" else a for a in container_argv(
            sidecar)], env)
        self.wait("the sidecar to become leader", lambda: b"liberator_leader 1.0" in http_get(
            port, "/metrics"), 60, logs=("sidecar",))
        store_port = free_port()
        self.spawn("eventstore", [LIBERATOR, "eventstore",
                                  "--subscription", "quotes-eventstore",
                                  "--subscription", "quotes-eventstore-seed",
                                  "--project", self.env["LIBERATOR_PUBSUB_PROJECT"],
                                  "--mongo-uri", self.env["LIBERATOR_MONGO_URI"],
                                  "--database", EVENTS_DB, "--http-port", str(store_port)], {})
        self.wait("the event store", lambda: http_get(store_port, "/readyz"), 60,
                  logs=("eventstore",))
        print(f"      sidecar metrics: http://127.0.0.1:{port}/metrics   "
              f"event store: http://127.0.0.1:{store_port}/metrics", flush=True)

    def resolve_env(self, container: dict[str, Any], pod: dict[str, Any]) -> dict[str, str]:
        """What a kubelet would put in the environment: values, secret keys, pod fields."""
        env: dict[str, str] = {}
        namespace = pod["metadata"]["namespace"]
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
                continue
            source = item.get("valueFrom", {})
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                secret = self.kube_json("-n", namespace, "get", "secret", ref["name"])
                env[item["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
            elif "fieldRef" in source:
                path = source["fieldRef"]["fieldPath"]
                env[item["name"]] = {"metadata.name": pod["metadata"]["name"],
                                     "metadata.namespace": namespace}.get(path, "")
        return env

    def write_quotes(self) -> list[tuple[str | None, str]]:
        self.step(6, f"writing {self.quotes} quotes and their changes with pymongo "
                     "(the 'quotes service'), then the live view of the event store")
        client: MongoClient[dict[str, Any]] = MongoClient(self.env["LIBERATOR_MONGO_URI"])
        quotes = client["quotes"]["quotes"]
        expected: list[tuple[str | None, str]] = []
        written: dict[tuple[str | None, str], dt.datetime] = {}

        def wrote(kind: str, quote_id: str) -> None:
            expected.append((kind, quote_id))
            written[(kind, quote_id)] = utcnow()

        ids = [f"Q-{1001 + i}" for i in range(self.quotes)]
        for i, quote_id in enumerate(ids):
            quotes.insert_one({"_id": quote_id, "version": 1, "customer": f"ACME-{i % 3}",
                               "amount": Decimal128(f"{1250 + 10 * i}.00"),
                               "currency": "EUR", "status": "draft",
                               "internalNotes": "never published",
                               "createdAt": dt.datetime.now(dt.UTC)})
            wrote("quote.created", quote_id)
        # A new version of the first quote (the service bumps the version on each change).
        quotes.update_one({"_id": ids[0]}, {"$set": {"amount": Decimal128("1190.00"),
                                                     "version": 2}})
        wrote("quote.updated", ids[0])
        # A purchase: the service names the business event in the document's _event field.
        quotes.update_one({"_id": ids[1]}, {"$set": {
            "status": "purchased", "version": 2,
            "_event": {"type": "quote.purchased", "correlationId": "order-77"}}})
        wrote("quote.purchased", ids[1])
        quotes.update_one({"_id": ids[2]}, {"$set": {"status": "sent", "version": 2}})
        wrote("quote.updated", ids[2])
        quotes.delete_one({"_id": ids[-1]})
        wrote("quote.deleted", ids[-1])
        self.show_events(client, expected, source="live", written=written)
        client.close()
        return expected

    def show_events(self, client: Any, expected: list[tuple[str | None, str]], source: str,
                    written: dict[tuple[str | None, str], dt.datetime] | None = None,
                    since: dt.datetime | None = None) -> None:
        """Print events as the event store receives them, until every expected one is there.

        Latency is from the write (or ``since``, the seed's start) to the event store's receipt;
        the emulator's change times have only whole seconds, so they are not used for it.
        """
        events = client[EVENTS_DB]["liberator_events"]
        wanted = list(expected)
        shown: set[str] = set()
        print(f"      {'type':<18} {'subject':<8} {'version':>7} {'latency':>9}  ce-id", flush=True)
        deadline = time.monotonic() + 60
        while wanted and time.monotonic() < deadline:
            seed_only = {"attributes.ce-seed": "true"} if source == "seed" else {
                "attributes.ce-seed": {"$exists": False}}
            for event in events.find(seed_only).sort("receivedAt", 1):
                if event["_id"] in shown:
                    continue
                shown.add(event["_id"])
                for key in wanted:
                    # A seeded event keeps the type the document's event context names.
                    if key[1] == event["subject"] and key[0] in (event["type"], None):
                        wanted.remove(key)
                        break
                start = (written or {}).get((event["type"], event["subject"])) or since
                latency = (event["receivedAt"] - (start or event["time"])).total_seconds()
                version = event["attributes"].get("ce-entityversion", "-")
                print(f"      {event['type']:<18} {event['subject']:<8} {version:>7} "
                      f"{latency * 1000:>7.0f}ms  {event['_id'][:8]}", flush=True)
            time.sleep(0.3)
        if wanted:
            raise DemoError(f"{len(wanted)} expected {source} events never reached the event "
                            f"store: {wanted}\n--- sidecar log:\n"
                            f"{log_tail(self.procs['sidecar'].log, 20)}\n--- event store log:\n"
                            f"{log_tail(self.procs['eventstore'].log, 20)}")
        print(f"      all {len(expected)} {source} events stored", flush=True)

    def seed(self, remaining: int) -> None:
        self.step(7, "applying EventSeed 'quotes-initial': every existing quote once, to the "
                     "seed topic")
        self.kubectl("apply", "-f", str(ROOT / "examples" / "quickstart" / "40-eventseed.yaml"))
        job_name = self.wait("the seed Job", lambda: self.kube_json(
            "-n", NAMESPACE, "get", "eventseed", SEED).get("status", {}).get("job"), 30,
            logs=("operator",))
        job = self.kube_json("-n", NAMESPACE, "get", "job", job_name)
        print(f"      operator created Job {job_name}; the demo runs its container locally "
              "(no kubelet) and then records the Job's completion as the Job controller would",
              flush=True)
        container = job["spec"]["template"]["spec"]["containers"][0]
        pod = {"metadata": {"name": f"{job_name}-local", "namespace": NAMESPACE}}
        env = self.resolve_env(container, pod)
        started = dt.datetime.now(dt.UTC)
        seed_started = utcnow()
        self.patch_job(job_name, {"startTime": rfc3339(started), "active": 1})
        proc = self.spawn("seed", [LIBERATOR if a == "liberator" else a
                                   for a in container_argv(container)], env)
        last = ""
        while proc.alive():
            status = self.kube_json("-n", NAMESPACE, "get", "eventseed", SEED).get("status", {})
            line = f"phase={status.get('phase')} seeded={status.get('seeded', 0)}"
            if line != last:
                print(f"      {line}", flush=True)
                last = line
            time.sleep(0.5)
        assert proc.popen is not None
        code = proc.popen.wait()
        summary = log_tail(proc.log, 1)
        finished = dt.datetime.now(dt.UTC)
        if code != 0:
            self.patch_job(job_name, {"failed": 1, "active": 0, "conditions": [
                job_condition("Failed", finished)]})
            raise DemoError(f"the seed exited {code}; its log:\n{log_tail(proc.log, 30)}")
        self.patch_job(job_name, {"succeeded": 1, "active": 0, "completionTime": rfc3339(
            finished), "conditions": [job_condition("SuccessCriteriaMet", finished),
                                      job_condition("Complete", finished)]})
        print(f"      seed finished: {summary.strip()}", flush=True)
        status = self.wait("EventSeed phase Succeeded", self.seed_succeeded, 60,
                           logs=("operator",))
        print(f"      EventSeed {SEED}: phase={status['phase']} seeded={status.get('seeded')}",
              flush=True)
        client: MongoClient[dict[str, Any]] = MongoClient(self.env["LIBERATOR_MONGO_URI"])
        ids = [doc["_id"] for doc in client["quotes"]["quotes"].find({}, {"_id": 1})]
        if len(ids) != remaining:
            raise DemoError(f"expected {remaining} quotes in the collection, found {len(ids)}")
        self.show_events(client, [(None, i) for i in ids], source="seed", since=seed_started)
        client.close()

    def seed_succeeded(self) -> dict[str, Any] | None:
        status: dict[str, Any] = self.kube_json(
            "-n", NAMESPACE, "get", "eventseed", SEED).get("status", {})
        return status if status.get("phase") == "Succeeded" else None

    def patch_job(self, name: str, status: dict[str, Any]) -> None:
        self.kubectl("-n", NAMESPACE, "patch", "job", name, "--subresource=status",
                     "--type=merge", "-p", json.dumps({"status": status}))

    def show_status(self) -> None:
        self.step(8, "status, as a platform engineer sees it")
        print(self.kubectl("get", "entitypublishers,eventseeds", "-A"), flush=True)
        kubeconfig = self.env["KUBECONFIG"]
        print("  Where to look next:\n"
              f"    export KUBECONFIG={kubeconfig}\n"
              "    kubectl -n quotes get entitypublisher quotes -o yaml   # conditions, leader, "
              "backlog\n"
              "    kubectl -n quotes get pod quotes-service -o yaml       # the injected "
              "sidecar\n"
              f"    curl -s 127.0.0.1:{self.sidecar_port}/metrics | grep ^liberator_\n"
              f"    logs: {self.run_dir / 'logs'}\n"
              "    docs/architecture.md, docs/operator.md, docs/publisher.md", flush=True)

    def hold(self) -> None:
        self.step(9, "running; press Ctrl-C to stop everything")
        env_file = self.run_dir / "env.sh"
        env_file.write_text("".join(f"export {k}={v}\n" for k, v in sorted(self.env.items())))
        print(f"      source {env_file} in another shell to use the stack", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while all(p.alive() for n, p in self.procs.items() if n != "seed"):
                time.sleep(1)
            dead = [n for n, p in self.procs.items() if n != "seed" and not p.alive()]
            raise DemoError(f"{', '.join(dead)} stopped unexpectedly")

    def run(self) -> int:
        try:
            self.bring_up_stack()
            self.apply_crds()
            self.start_operator()
            pod = self.apply_examples()
            self.run_sidecar_and_store(pod)
            self.write_quotes()
            self.seed(remaining=self.quotes - 1)
            self.show_status()
            if self.interactive:
                self.hold()
            else:
                print(f"\n[demo] every expected event arrived; done in "
                      f"{time.monotonic() - self.started:.0f}s (non-interactive)", flush=True)
            return 0
        except (DemoError, StackError) as error:
            print(f"\n[demo] FAILED at {self.step_name}\n{error}", file=sys.stderr, flush=True)
            return 1
        finally:
            print("[demo] stopping every process", flush=True)
            self.stop_all()


def condition(body: dict[str, Any], kind: str) -> str | None:
    for cond in body.get("status", {}).get("conditions", []):
        if cond.get("type") == kind:
            return str(cond.get("status"))
    return None


def injected_sidecar(pod: dict[str, Any]) -> dict[str, Any] | None:
    spec = pod["spec"]
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        if container.get("command", [])[:2] == ["liberator", "publish"]:
            return dict(container)
    return None


def container_argv(container: dict[str, Any]) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def http_get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
        return bytes(response.read())


def utcnow() -> dt.datetime:
    """Naive UTC, as pymongo returns stored datetimes."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def rfc3339(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def job_condition(kind: str, moment: dt.datetime) -> dict[str, str]:
    return {"type": kind, "status": "True", "lastProbeTime": rfc3339(moment),
            "lastTransitionTime": rfc3339(moment)}


def kube_binary_cached() -> bool:
    return any((cache_dir() / "kube").glob("*/kube-apiserver"))


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
        print(f"DEMO_QUOTES={os.environ['DEMO_QUOTES']!r} is not a number", file=sys.stderr)
        return 2
    if quotes < 4:
        print("DEMO_QUOTES must be at least 4 (the demo updates, purchases and deletes quotes)",
              file=sys.stderr)
        return 2
    with sigterm_as_interrupt():
        return Demo(quotes, interactive).run()


if __name__ == "__main__":
    sys.exit(main())

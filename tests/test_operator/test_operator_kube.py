"""The operator against the real kube-apiserver, Pub/Sub emulator and Redis of the local stack.

The operator runs as a subprocess (``liberator operator``), serving its admission webhook on
127.0.0.1; the API server calls it for every Pod CREATE. There is no kubelet: pods stay Pending
and Jobs never run, so the tests move a seed Job along by patching its status, as a Job
controller would.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymongo
import pytest
import redis as redis_lib
import yaml
from google.cloud import pubsub_v1
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from liberator_operator.cluster import Cluster
from liberator_operator.datastatus import seed_key
from liberator_publisher.core.contract import control_key, status_key
from liberator_stack import Stack
from liberator_stack.process import free_port
from tests.support import commands, waiting
from tests.support.stack import running

pytestmark = pytest.mark.kube

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"
DEADLINE = 60.0
GROUP, VERSION = "liberator.io", "v1alpha1"


def eventually(check: Callable[[], Any], *, what: str, deadline: float = DEADLINE) -> Any:
    """Poll ``check``; an API error while the object settles counts as not yet."""
    return waiting.eventually(
        check, what=what, deadline=deadline, every=0.25, retry_on=(ApiException,)
    )


# -- the stack and the operator -------------------------------------------------------------------


@dataclass
class Env:
    kubeconfig: str
    api: client.ApiClient
    project: str
    emulator: str
    redis_url: str

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api)

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = commands.run(
            ["kubectl", *args],
            env={**os.environ, "KUBECONFIG": self.kubeconfig},
            timeout=60,
            stdin=stdin,
        )
        if check and result.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result

    def create(self, namespace: str, plural: str, body: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)

    def patch(self, namespace: str, plural: str, name: str, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, plural, name, patch)

    def delete(self, namespace: str, plural: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)

    def get(self, namespace: str, plural: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, name
        )
        return obj

    def publisher(self, namespace: str, name: str) -> dict[str, Any]:
        return self.get(namespace, "entitypublishers", name)

    def seed(self, namespace: str, name: str) -> dict[str, Any]:
        return self.get(namespace, "eventseeds", name)


def when(
    get: Callable[[], dict[str, Any]], test: Callable[[dict[str, Any]], bool]
) -> Callable[[], dict[str, Any] | None]:
    """A check for :func:`eventually`: the object once ``test`` holds for it."""

    def check() -> dict[str, Any] | None:
        obj = get()
        return obj if test(obj) else None

    return check


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return {}


def publisher_once(
    e: Env, namespace: str, name: str, test: Callable[[dict[str, Any]], Any], *, what: str
) -> dict[str, Any]:
    """The publisher once ``test`` holds for it."""
    found: dict[str, Any] = eventually(when(lambda: e.publisher(namespace, name), test), what=what)
    return found


def with_condition(
    e: Env, namespace: str, name: str, type_: str, **expected: str
) -> dict[str, Any]:
    """The publisher once its condition ``type_`` has the ``expected`` fields."""
    return publisher_once(
        e,
        namespace,
        name,
        lambda p: expected.items() <= condition(p, type_).items(),
        what=f"{name}: {type_} with {expected}",
    )


def with_reason(e: Env, namespace: str, name: str, reason: str) -> dict[str, Any]:
    """The publisher once its STATUS column (``status.reason``) shows ``reason``."""
    return publisher_once(
        e,
        namespace,
        name,
        lambda p: (p.get("status") or {}).get("reason") == reason,
        what=f"{name}: STATUS {reason}",
    )


def condition_once(
    e: Env, namespace: str, name: str, type_: str, **expected: str
) -> dict[str, Any]:
    """The publisher's condition ``type_`` once it has the ``expected`` fields."""

    def check() -> dict[str, Any] | None:
        cond = condition(e.publisher(namespace, name), type_)
        return cond if cond and expected.items() <= cond.items() else None

    found: dict[str, Any] = eventually(check, what=f"{name}: {type_} with {expected}")
    return found


@pytest.fixture(scope="module")
def env(stack: Stack) -> Iterator[Env]:
    kube = running(stack, "kube")
    pubsub = running(stack, "pubsub")
    redis = running(stack, "redis")
    kubeconfig = kube.exports["KUBECONFIG"]
    api = config.new_client_from_config(config_file=kubeconfig)
    e = Env(
        kubeconfig,
        api,
        pubsub.exports["LIBERATOR_PUBSUB_PROJECT"],
        pubsub.exports["PUBSUB_EMULATOR_HOST"],
        redis.exports["LIBERATOR_REDIS_URL"],
    )
    e.kubectl("apply", "-f", str(ROOT / "crds"))
    e.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/entitypublishers.liberator.io",
        "crd/eventseeds.liberator.io",
    )
    with mock_env(PUBSUB_EMULATOR_HOST=e.emulator):
        yield e
    api.close()


@contextlib.contextmanager
def mock_env(**values: str) -> Iterator[None]:
    """Set process environment variables for the Pub/Sub clients of this module's tests."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class Operator:
    """A ``liberator operator`` subprocess with its log."""

    def __init__(self, e: Env, log: Path, *extra: str, configure: bool = True) -> None:
        self.port = free_port()
        self.log = log
        self.argv = [
            str(Path(sys.executable).with_name("liberator")),
            "operator",
            "--verbose",
            "--webhook-addr",
            "127.0.0.1",
            "--webhook-host",
            "127.0.0.1",
            "--webhook-port",
            str(self.port),
            *extra,
        ]
        if configure:
            # Not deploy/'s name: the deploy dry-run test applies that one to the same server.
            self.argv += ["--webhook-configure", "liberator-injector-test"]
        self.environment = {
            **os.environ,
            "KUBECONFIG": e.kubeconfig,
            "PUBSUB_EMULATOR_HOST": e.emulator,
            "LIBERATOR_OPERATOR_NAMESPACE": "liberator-system",
            "LIBERATOR_OPERATOR_IMAGE": "ghcr.io/liberator-io/liberator:test",
            "LIBERATOR_OPERATOR_STATUS_INTERVAL": "1",
            "LIBERATOR_OPERATOR_SEED_INTERVAL": "1",
            "LIBERATOR_OPERATOR_RETRY_DELAY": "2",
            "LIBERATOR_OPERATOR_BACKOFF_MAX": "4",
        }
        self.start()

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.environment,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        commands.stop(self.proc)


def make_namespace(e: Env, name: str) -> str:
    with contextlib.suppress(ApiException):
        e.core.create_namespace({"metadata": {"name": name}})
    return name


def pod_body(
    name: str,
    labels: dict[str, str],
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels, "annotations": annotations or {}},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
    }


def sidecars(pod: Any) -> list[Any]:
    spec = (
        pod["spec"]
        if isinstance(pod, dict)
        else client.ApiClient().sanitize_for_serialization(pod)["spec"]
    )
    return [
        c
        for c in (spec.get("initContainers") or []) + spec["containers"]
        if c["name"].startswith("liberator-")
    ]


def wait_webhook_live(e: Env, op: Operator) -> None:
    """Until a dry-run pod in a probe namespace comes back injected (no side effects)."""
    ns = make_namespace(e, "liberator-probe")
    if not _exists(lambda: e.core.read_namespaced_secret("probe-mongo", ns)):
        secret(e, ns, "probe-mongo", uri="mongodb://x")
    if not _exists(lambda: e.publisher(ns, "probe")):
        e.create(ns, "entitypublishers", ep_body(e, "probe", {"app": "probe"}))

    def injected() -> bool:
        if op.proc.poll() is not None:
            pytest.fail(f"operator exited {op.proc.returncode}:\n{op.text()[-3000:]}")
        try:
            pod = e.core.create_namespaced_pod(
                ns, pod_body("probe", {"app": "probe"}), dry_run="All"
            )
        except ApiException:
            return False
        return bool(sidecars(pod))

    eventually(injected, what="the webhook to inject a dry-run pod", deadline=90)


def _exists(read: Callable[[], Any]) -> bool:
    try:
        read()
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def add_publisher(e: Env, namespace: str, name: str, **spec: Any) -> None:
    """The EntityPublisher ``name`` for pods labelled app=``name``, and its MongoDB Secret."""
    secret(e, namespace, f"{name}-mongo", uri="mongodb://x")
    e.create(namespace, "entitypublishers", ep_body(e, name, {"app": name}, **spec))


def seed_body(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EventSeed",
        "metadata": {"name": name},
        "spec": spec,
    }


def ep_body(e: Env, name: str, labels: dict[str, str], **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EntityPublisher",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": labels},
            "mongo": {
                "uriSecretRef": {"name": f"{name}-mongo"},
                "database": "sales",
                "collection": name,
            },
            "entity": {"type": "quote"},
            "pubsub": {"project": e.project, "topic": f"{name}-events"},
            "redis": {"url": e.redis_url},
        },
    }
    body["spec"].update(spec)
    return body


@pytest.fixture(scope="module")
def operator(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = Operator(env, log, "--standalone")
    try:
        wait_webhook_live(env, op)
        yield op
    finally:
        op.stop()
        print(f"operator log: {log}")


@pytest.fixture()
def ns(env: Env, unique: str) -> str:
    return make_namespace(env, f"t-{unique}")


def secret(e: Env, namespace: str, name: str, **data: str) -> None:
    e.core.create_namespaced_secret(namespace, {"metadata": {"name": name}, "stringData": data})


def topics(e: Env) -> set[str]:
    publisher = pubsub_v1.PublisherClient()
    return {t.name for t in publisher.list_topics(request={"project": f"projects/{e.project}"})}


def subscriptions(e: Env) -> set[str]:
    subscriber = pubsub_v1.SubscriberClient()
    try:
        return {
            s.name
            for s in subscriber.list_subscriptions(request={"project": f"projects/{e.project}"})
        }
    finally:
        subscriber.close()


# -- CRD validation (no operator needed) ----------------------------------------------------------

BAD_SPECS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("empty collection", lambda s: s["mongo"].update(collection=""), "spec.mongo.collection"),
    (
        "unknown deletion policy",
        lambda s: s.update(deletionPolicy="Forget"),
        'Unsupported value: "Forget"',
    ),
    ("invalid topic name", lambda s: s["pubsub"].update(topic="goog-events"), "invalid topic name"),
    ("topic with a space", lambda s: s["pubsub"].update(topic="my events"), "invalid topic name"),
    ("match-everything selector", lambda s: s.update(selector={}), "selector matches every pod"),
    (
        "both redis url and secret",
        lambda s: s["redis"].update(secretRef={"name": "r"}),
        "exactly one of redis.url and redis.secretRef",
    ),
    ("bad entity type", lambda s: s["entity"].update(type="Quote!"), "entity type must"),
    ("bad redis url", lambda s: s["redis"].update(url="http://x"), "redis url must"),
    (
        "duplicate subscriptions",
        lambda s: s["pubsub"].update(subscriptions=[{"name": "dup-sub"}, {"name": "dup-sub"}]),
        "subscription names must be unique",
    ),
    (
        "restart without id",
        lambda s: s.update(restartFrom={"position": "now"}),
        "spec.restartFrom.id: Required value",
    ),
    (
        "restart with position and time",
        lambda s: s.update(
            restartFrom={"id": "r", "position": "now", "time": "2026-01-01T00:00:00Z"}
        ),
        "spec.restartFrom needs exactly one of position (now) or time",
    ),
    (
        "restart with neither",
        lambda s: s.update(restartFrom={"id": "r"}),
        "spec.restartFrom needs exactly one of position (now) or time",
    ),
    (
        "restart from an unknown position",
        lambda s: s.update(restartFrom={"id": "r", "position": "earliest"}),
        'Unsupported value: "earliest"',
    ),
    (
        "restart from a bad time",
        lambda s: s.update(restartFrom={"id": "r", "time": "yesterday"}),
        "spec.restartFrom.time must be an RFC 3339 time with a zone",
    ),
    (
        "restart from a time without a zone",
        lambda s: s.update(restartFrom={"id": "r", "time": "2026-01-01T00:00:00"}),
        "spec.restartFrom.time must be an RFC 3339 time with a zone",
    ),
    (
        "resume-point margin of 0",
        lambda s: s.update(resumePointMarginPercent=0),
        "spec.resumePointMarginPercent: Invalid value: 0: spec.resumePointMarginPercent in body "
        "should be greater than or equal to 1",
    ),
    (
        "resume-point margin over 99",
        lambda s: s.update(resumePointMarginPercent=100),
        "spec.resumePointMarginPercent in body should be less than or equal to 99",
    ),
]


@pytest.mark.parametrize(("what", "mutate", "message"), BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_invalid_publisher_is_refused_with_its_message(
    env: Env, ns: str, what: str, mutate: Callable[[dict[str, Any]], None], message: str
) -> None:
    body = ep_body(env, "bad", {"app": "x"})
    mutate(body["spec"])
    result = env.kubectl("apply", "-n", ns, "-f", "-", stdin=json.dumps(body), check=False)
    assert result.returncode != 0, what
    assert message in result.stderr, result.stderr
    assert not _exists(lambda: env.publisher(ns, "bad")), "nothing was stored"


def test_match_everything_is_accepted_when_allowed(env: Env, ns: str) -> None:
    body = ep_body(env, "everything", {})
    body["spec"].update(selector={}, allowMatchAll=True)
    result = env.kubectl(
        "apply", "--dry-run=server", "-n", ns, "-f", "-", stdin=json.dumps(body), check=False
    )
    assert result.returncode == 0, result.stderr
    assert "entitypublisher.liberator.io/everything created (server dry run)" in result.stdout


def test_seed_without_publisher_is_refused_and_spec_is_immutable(env: Env, ns: str) -> None:
    seed = seed_body("s", {"mode": "latest"})
    result = env.kubectl("apply", "-n", ns, "-f", "-", stdin=json.dumps(seed), check=False)
    assert result.returncode != 0
    assert "spec.publisher: Required value" in result.stderr
    seed["spec"] = {"publisher": "p", "mode": "sometimes"}
    result = env.kubectl("apply", "-n", ns, "-f", "-", stdin=json.dumps(seed), check=False)
    assert 'Unsupported value: "sometimes"' in result.stderr
    seed["spec"] = {"publisher": "p"}
    env.kubectl("apply", "-n", ns, "-f", "-", stdin=json.dumps(seed))
    stored = env.seed(ns, "s")
    assert stored["spec"]["mode"] == "latest", "defaulted by the schema"
    assert stored["spec"]["batchSize"] == 500
    assert stored["spec"]["allowEmpty"] is False
    seed["spec"] = {"publisher": "other"}
    result = env.kubectl("apply", "-n", ns, "-f", "-", stdin=json.dumps(seed), check=False)
    assert "spec is immutable" in result.stderr
    assert env.seed(ns, "s")["spec"]["publisher"] == "p"


@pytest.mark.parametrize("bad", ["Quotes_Seeder", "-seeder", "seeder.", "a" * 254])
def test_seed_service_account_name_is_validated(env: Env, ns: str, bad: str) -> None:
    seed = seed_body("sa", {"publisher": "p", "serviceAccountName": bad})
    result = env.kubectl(
        "apply", "--dry-run=server", "-n", ns, "-f", "-", stdin=json.dumps(seed), check=False
    )
    assert result.returncode != 0
    assert "spec.serviceAccountName" in result.stderr
    seed["spec"] = {"publisher": "p", "serviceAccountName": "quotes-seeder.v2", "allowEmpty": "yes"}
    result = env.kubectl(
        "apply", "--dry-run=server", "-n", ns, "-f", "-", stdin=json.dumps(seed), check=False
    )
    assert "spec.allowEmpty" in result.stderr
    seed["spec"] = {"publisher": "p", "serviceAccountName": "quotes-seeder.v2"}
    env.kubectl("apply", "--dry-run=server", "-n", ns, "-f", "-", stdin=json.dumps(seed))


def test_examples_validate_against_the_crds(env: Env, ns: str) -> None:
    docs = [
        doc
        for path in sorted((ROOT / "examples").rglob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("apiVersion") == f"{GROUP}/{VERSION}"
    ]
    assert {d["kind"] for d in docs} == {"EntityPublisher", "EventSeed"}
    for doc in docs:
        doc["metadata"]["namespace"] = ns
        result = env.kubectl(
            "apply", "--dry-run=server", "-f", "-", stdin=json.dumps(doc), check=False
        )
        assert result.returncode == 0, f"{doc['kind']} {doc['metadata']['name']}: {result.stderr}"


def test_explain_reads_the_descriptions(env: Env) -> None:
    out = env.kubectl("explain", "entitypublisher.spec.deletionPolicy").stdout
    assert "Retain keeps the topics" in out


def test_server_version_selects_native_sidecars(env: Env) -> None:
    cluster = Cluster(env.api)
    major, minor = cluster.version()
    expected = int(major) > 1 or int(minor.rstrip("+")) >= 29
    assert cluster.native_sidecars() is expected
    info = client.VersionApi(env.api).get_code()
    assert (info.major, info.minor) == (major, minor)


# -- provisioning, status, deletion ---------------------------------------------------------------


def test_publisher_provisions_pubsub_and_deletes_under_delete(
    env: Env, operator: Operator, ns: str, unique: str
) -> None:
    secret(env, ns, "quotes-mongo", uri="mongodb://127.0.0.1:1/")
    manifest = (DATA / "publisher.yaml").read_text()
    manifest = manifest.replace("redis://127.0.0.1:6379/0", env.redis_url)
    manifest = manifest.replace("liberator-local", env.project)
    manifest = manifest.replace("quote-events", f"quote-events-{unique}")
    manifest = manifest.replace("quote-billing", f"quote-billing-{unique}")
    publisher_doc = next(d for d in yaml.safe_load_all(manifest) if d["kind"] == "EntityPublisher")
    env.kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(publisher_doc))
    ready = with_condition(env, ns, "quotes", "Ready", status="True")
    status = ready["status"]
    topic = f"projects/{env.project}/topics/quote-events-{unique}"
    sub = f"projects/{env.project}/subscriptions/quote-billing-{unique}"
    assert status["topic"] == topic
    assert status["seedTopic"] == f"{topic}.seed"
    assert status["observedGeneration"] == ready["metadata"]["generation"]
    assert condition(ready, "TopicReady")["status"] == "True"
    assert condition(ready, "SubscriptionsReady")["reason"] == "SubscriptionsExist"
    assert {topic, f"{topic}.seed"} <= topics(env)
    assert sub in subscriptions(env)

    # The short name: kubectl finds the publisher by it, with no warning, and no other resource
    # served by this API server claims it (ep would have been core Endpoints).
    by_short = env.kubectl("get", "entpub", "quotes", "-n", ns, "-o", "name")
    assert by_short.stdout.strip() == "entitypublisher.liberator.io/quotes"
    assert by_short.stderr == ""
    claims = [
        line.split()
        for line in env.kubectl("api-resources", "--no-headers").stdout.splitlines()
        if "entpub" in line.split()
    ]
    assert [row[0] for row in claims] == ["entitypublishers"]

    def table() -> list[list[str]]:
        return [
            line.split()
            for line in env.kubectl("get", "entitypublishers", "-n", ns).stdout.splitlines()
        ]

    # The Pods column fills in once the status timer has counted (no pod carries it yet).
    rows = eventually(
        lambda: next((t for t in [table()] if len(t[1]) == 9), None),
        what="every printer column to have a value",
    )
    assert rows[0] == [
        "NAME",
        "ENTITY",
        "COLLECTION",
        "TOPIC",
        "PODS",
        "READY",
        "STATUS",
        "LAG",
        "AGE",
    ]
    assert rows[1][:8] == [
        "quotes",
        "quote",
        "quotes",
        f"quote-events-{unique}",
        "0",
        "True",
        "NoSidecar",
        "Unknown",
    ]

    # A spec change moves observedGeneration and keeps the conditions.
    env.patch(
        ns,
        "entitypublishers",
        "quotes",
        {"spec": {"sidecar": {"logLevel": "DEBUG"}}},
    )
    publisher_once(
        env,
        ns,
        "quotes",
        lambda p: (
            p["status"]["observedGeneration"] == p["metadata"]["generation"]
            and condition(p, "Ready")["status"] == "True"
        ),
        what="observedGeneration to follow the spec change",
    )

    env.delete(ns, "entitypublishers", "quotes")
    eventually(
        lambda: not _exists(lambda: env.publisher(ns, "quotes")),
        what="the finalizer to let the publisher go",
    )
    assert not {topic, f"{topic}.seed"} & topics(env)
    assert sub not in subscriptions(env)


@pytest.fixture()
def slow_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real redis-server of this test's own, which the test pauses (SIGSTOP) to answer late."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (the local stack's Redis needs it too)")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis_lib.Redis.from_url(url, socket_timeout=1)
        eventually(lambda: _pings(client), what="the test's redis-server", deadline=20)
        client.close()
        yield url, proc
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        proc.wait(timeout=10)


def _pings(client: redis_lib.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis_lib.RedisError:
        return False


DELETIONS = 10
DELETE_WITHIN = 5.0  # seconds; the issue's functional bound, not a performance target


def test_deletion_finishes_while_the_status_read_hangs(
    env: Env, operator: Operator, ns: str, slow_redis: tuple[str, subprocess.Popen[bytes]]
) -> None:
    """A deletion that arrives while the status timer waits on Redis must not wait kopf's
    default 60 s re-check. Redis is paused, so each tick hangs in its read until the client's
    timeout; deleting at varied moments lands some deletions inside a read."""
    url, redis_proc = slow_redis
    took: dict[str, float] = {}
    for i in range(DELETIONS):
        name = f"slow-{i}"
        secret(env, ns, f"{name}-mongo", uri="mongodb://x")
        env.create(
            ns,
            "entitypublishers",
            ep_body(env, name, {"app": name}, redis={"url": url}),
        )
        eventually(
            lambda: condition(env.publisher(ns, name), "Publishing"),  # noqa: B023
            what=f"{name}: the status timer has ticked",
        )
        redis_proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(1.0 + 0.2 * i)  # ticks now take the read timeout (1 s) plus the interval
            started = time.monotonic()
            env.delete(ns, "entitypublishers", name)
            eventually(
                lambda: not _exists(lambda: env.publisher(ns, name)),  # noqa: B023
                what=f"{name} to be deleted",
                deadline=90,
            )
            took[name] = time.monotonic() - started
        finally:
            redis_proc.send_signal(signal.SIGCONT)
    slow = {n: round(t, 1) for n, t in took.items() if t >= DELETE_WITHIN}
    assert not slow, f"deletions over {DELETE_WITHIN:.0f}s: {slow} (all: {took})"
    # The race was hit: some deletion found a tick still running and re-checked it.
    raced = [n for n in took if f"[{ns}/{n}] Timer 'observe' is still exiting" in operator.text()]
    assert raced, f"no deletion landed inside a status read in {DELETIONS} tries: {took}"
    print(f"deletion seconds: {took}; inside a read: {raced}")


def test_retain_keeps_topics(env: Env, operator: Operator, ns: str, unique: str) -> None:
    secret(env, ns, f"keep-{unique}-mongo", uri="mongodb://x")
    env.create(ns, "entitypublishers", ep_body(env, f"keep-{unique}", {"app": "k"}))
    condition_once(env, ns, f"keep-{unique}", "Ready", status="True")
    env.delete(ns, "entitypublishers", f"keep-{unique}")
    eventually(
        lambda: not _exists(lambda: env.publisher(ns, f"keep-{unique}")), what="the publisher to go"
    )
    assert f"projects/{env.project}/topics/keep-{unique}-events" in topics(env)


def test_missing_secret_shows_then_heals(env: Env, operator: Operator, ns: str) -> None:
    env.create(ns, "entitypublishers", ep_body(env, "orders", {"app": "orders"}))
    cond = condition_once(env, ns, "orders", "Ready")
    assert cond["status"] == "False"
    assert cond["reason"] == "MongoSecretMissing"
    assert f"Secret {ns}/orders-mongo" in cond["message"]
    secret(env, ns, "orders-mongo", other="x")
    condition_once(env, ns, "orders", "Ready", reason="MongoSecretKeyMissing")
    env.core.patch_namespaced_secret("orders-mongo", ns, {"stringData": {"uri": "mongodb://x"}})
    condition_once(env, ns, "orders", "Ready", status="True")


def test_parked_leader_turns_publishing_false(env: Env, operator: Operator, ns: str) -> None:
    add_publisher(env, ns, "parked")
    condition_once(env, ns, "parked", "Publishing", reason="NoSidecar")
    waiting = with_reason(env, ns, "parked", "NoSidecar")
    assert waiting["status"]["lag"] == "Unknown"  # no leader's record: not a reassuring 0
    r = redis_lib.Redis.from_url(env.redis_url)
    record = {
        "pod": "app-0",
        "epoch": 7,
        "lastEventTime": "2026-01-01T00:00:00Z",
        "captureLagSeconds": 0.5,
        "relayLagSeconds": 0.1,
        "backlog": 3,
        "parked": "",
        "captureSince": "2025-12-31T08:00:00.000Z",
        "updatedAt": "2026-01-01T00:00:00Z",
    }
    r.set(status_key(f"{ns}/parked"), json.dumps(record), ex=120)
    leading = with_condition(env, ns, "parked", "Publishing", status="True")
    assert leading["status"]["leader"] == "app-0"
    assert leading["status"]["epoch"] == 7
    assert leading["status"]["backlog"] == 3
    assert leading["status"]["captureSince"] == "2025-12-31T08:00:00.000Z"
    with_reason(env, ns, "parked", "Publishing")
    header, row = env.kubectl("get", "entitypublishers", "parked", "-n", ns).stdout.splitlines()
    assert header.split()[5:8] == ["READY", "STATUS", "LAG"], header
    assert row.split()[5:8] == ["True", "Publishing", "0.5s"], row
    record["parked"] = "ChangeStreamHistoryLost: resume point fell off the oplog"
    r.set(status_key(f"{ns}/parked"), json.dumps(record), ex=120)
    parked = condition_once(env, ns, "parked", "Publishing", reason="Parked")
    assert parked["status"] == "False"
    assert "ChangeStreamHistoryLost" in parked["message"]
    with_reason(env, ns, "parked", "Parked")
    # The documented recovery as one command with the real names; not "restart the pods".
    assert (
        f"kubectl exec -n {ns} app-0 -c liberator-parked -- liberator publish --reset-checkpoint"
    ) in parked["message"]
    assert "EventSeed" in parked["message"] and "restart the" not in parked["message"]
    assert condition(env.publisher(ns, "parked"), "Ready")["status"] == "True", (
        "the timer did not overwrite the reconciler's conditions"
    )


def test_stalled_leader_shows_stalled_with_checkpoint_ages_and_clears(
    env: Env, operator: Operator, ns: str
) -> None:
    add_publisher(env, ns, "stuck")
    unknown = condition_once(env, ns, "stuck", "Stalled")
    assert unknown["status"] == "Unknown"  # no leader's record: not a reassuring False
    r = redis_lib.Redis.from_url(env.redis_url)
    ages = {
        "capture": {"movedAt": "2026-01-01T00:00:00.000Z", "ageSeconds": 1.5},
        "relay": {"movedAt": "2025-12-31T23:50:00.000Z", "ageSeconds": 601.5},
    }
    record = {
        "pod": "app-0",
        "epoch": 3,
        "captureLagSeconds": 0.2,
        "relayLagSeconds": 0.1,
        "backlog": 40,
        "parked": "",
        "updatedAt": "2026-01-01T00:00:01Z",
        "checkpoints": ages,
        "stalled": {
            "reason": "NothingPublished",
            "since": "2025-12-31T23:50:00.000Z",
            "message": "40 event(s) pending and nothing published for 601s",
        },
    }
    r.set(status_key(f"{ns}/stuck"), json.dumps(record), ex=120)
    stuck = with_reason(env, ns, "stuck", "Stalled")
    stalled = condition(stuck, "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "NothingPublished"
    assert "40 event(s) pending" in stalled["message"]
    assert "since 2025-12-31T23:50:00.000Z" in stalled["message"]
    assert condition(stuck, "Publishing")["status"] == "True"  # it leads; it does not move
    assert stuck["status"]["checkpoints"] == ages
    row = env.kubectl("get", "entitypublishers", "stuck", "-n", ns).stdout.splitlines()[1]
    assert row.split()[5:7] == ["True", "Stalled"], row
    del record["stalled"]
    r.set(status_key(f"{ns}/stuck"), json.dumps(record), ex=120)
    moving = with_reason(env, ns, "stuck", "Publishing")
    assert condition(moving, "Stalled")["status"] == "False"
    assert condition(moving, "Stalled")["reason"] == "Moving"


def test_resume_point_at_risk_shows_and_an_older_restart_time_is_refused(
    env: Env, operator: Operator, ns: str
) -> None:
    add_publisher(env, ns, "risk")
    unknown = condition_once(env, ns, "risk", "ResumePointAtRisk")
    assert (unknown["status"], unknown["reason"]) == ("Unknown", "NoLeader")  # never a safe False
    r = redis_lib.Redis.from_url(env.redis_url)
    point = {
        "status": "True",
        "reason": "ResumePointAtRisk",
        "message": "the capture checkpoint is near the oldest oplog entry (headroom "
        "capture 600s, relay 3590s; below 25% of the 3600s oplog window)",
        "windowSeconds": 3600.0,
        "oldestEntry": "2026-01-01T00:00:00.000Z",
        "headroomSeconds": {"capture": 600.0, "relay": 3590.0},
    }
    record = {
        "pod": "app-0",
        "epoch": 3,
        "captureLagSeconds": 0.2,
        "relayLagSeconds": 0.1,
        "backlog": 0,
        "parked": "",
        "updatedAt": "2026-01-01T01:00:00Z",
        "resumePoint": point,
    }
    r.set(status_key(f"{ns}/risk"), json.dumps(record), ex=120)
    risky = with_condition(env, ns, "risk", "ResumePointAtRisk", status="True")
    at_risk = condition(risky, "ResumePointAtRisk")
    assert at_risk["reason"] == "ResumePointAtRisk" and at_risk["message"] == point["message"]
    with_reason(env, ns, "risk", "ResumePointAtRisk")
    row = env.kubectl("get", "entitypublishers", "risk", "-n", ns).stdout.splitlines()[1]
    assert row.split()[5:7] == ["True", "ResumePointAtRisk"], row
    shown = publisher_once(
        env, ns, "risk", lambda p: p["status"].get("resumePoint"), what="status.resumePoint"
    )
    assert shown["status"]["resumePoint"] == {
        "windowSeconds": 3600.0,
        "oldestEntry": "2026-01-01T00:00:00.000Z",
        "headroomSeconds": {"capture": 600.0, "relay": 3590.0},
    }

    # Where the window is known, a restart time before it is refused at apply time.
    env.patch(
        ns,
        "entitypublishers",
        "risk",
        {"spec": {"restartFrom": {"id": "too-old", "time": "2025-12-31T12:00:00Z"}}},
    )
    refused = condition_once(env, ns, "risk", "RestartRejected", status="True")
    assert refused["reason"] == "OlderThanOplog"
    assert "older than the oldest oplog entry (2026-01-01T00:00:00.000Z" in refused["message"]
    assert json.loads(r.get(control_key(f"{ns}/risk")) or "{}").get("restartFrom") is None

    point.update(status="False", reason="HeadroomOK", message="headroom capture 3590s")
    r.set(status_key(f"{ns}/risk"), json.dumps(record), ex=120)
    clear = with_condition(env, ns, "risk", "ResumePointAtRisk", status="False")
    assert condition(clear, "ResumePointAtRisk")["reason"] == "HeadroomOK"


def test_paused_publisher_shows_paused(env: Env, operator: Operator, ns: str) -> None:
    add_publisher(env, ns, "held", paused=True)
    held = with_reason(env, ns, "held", "Paused")
    assert condition(held, "Ready")["reason"] == "Paused"
    assert held["status"]["lag"] == "Unknown"
    # The leader learns it from the control record, which the operator keeps in Redis.
    r = redis_lib.Redis.from_url(env.redis_url)
    eventually(
        lambda: json.loads(r.get(control_key(f"{ns}/held")) or "{}").get("paused"),
        what="control record paused",
    )
    env.patch(ns, "entitypublishers", "held", {"spec": {"paused": False}})
    eventually(
        lambda: json.loads(r.get(control_key(f"{ns}/held")) or "{}").get("paused") is False,
        what="control record unpaused",
    )
    env.delete(ns, "entitypublishers", "held")
    eventually(
        lambda: r.get(control_key(f"{ns}/held")) is None,
        what="control record deleted with the publisher",
    )


def test_restart_from_reaches_the_leader_and_its_report_the_status(
    env: Env, operator: Operator, ns: str
) -> None:
    add_publisher(env, ns, "rs", restartFrom={"id": "recover-1", "position": "now"})
    r = redis_lib.Redis.from_url(env.redis_url)
    sent = eventually(
        lambda: json.loads(r.get(control_key(f"{ns}/rs")) or "{}").get("restartFrom"),
        what="control record carries the request",
    )
    assert sent == {"id": "recover-1", "position": "now"}
    pending = condition_once(env, ns, "rs", "RestartRejected")
    assert pending["status"] == "False" and pending["reason"] == "Pending"
    # What the leader reports once it ran (test_publisher/test_control.py runs the real one).
    done = {
        "id": "recover-1",
        "doneAt": "2026-01-01T00:00:01.000Z",
        "position": "now",
        "operationTime": "2026-01-01T00:00:01.000Z",
        "pod": "app-0",
    }
    record = {
        "pod": "app-0",
        "epoch": 3,
        "captureLagSeconds": 0.0,
        "relayLagSeconds": 0.0,
        "backlog": 0,
        "parked": "",
        "updatedAt": "2026-01-01T00:00:00Z",
        "restart": done,
    }
    r.set(status_key(f"{ns}/rs"), json.dumps(record), ex=120)
    shown = publisher_once(
        env, ns, "rs", lambda p: (p.get("status") or {}).get("restart"), what="status.restart"
    )
    assert shown["status"]["restart"] == done
    condition_once(env, ns, "rs", "RestartRejected", reason="Done")
    events = eventually(
        lambda: [e for e in env.core.list_namespaced_event(ns).items if e.reason == "Restarted"],
        what="a Restarted event",
    )
    assert "recover-1" in events[0].message

    # A time in the future is refused by the operator: not sent, a clear condition instead.
    env.patch(
        ns,
        "entitypublishers",
        "rs",
        {
            "spec": {
                "restartFrom": {"id": "later", "time": "2999-01-01T00:00:00Z", "position": None}
            }
        },
    )
    refused = condition_once(env, ns, "rs", "RestartRejected", status="True")
    assert refused["reason"] == "FutureTime"
    assert "spec.restartFrom.time 2999-01-01T00:00:00Z is in the future" in refused["message"]
    assert json.loads(r.get(control_key(f"{ns}/rs")) or "{}").get("restartFrom") is None


# -- injection ------------------------------------------------------------------------------------


def test_injection_through_the_api_server(env: Env, operator: Operator, ns: str) -> None:
    add_publisher(env, ns, "shop")
    pod = env.core.create_namespaced_pod(ns, pod_body("match", {"app": "shop"}))
    raw = env.api.sanitize_for_serialization(pod)
    [sidecar] = sidecars(raw)
    assert sidecar["name"] == "liberator-shop"
    assert sidecar in raw["spec"].get("initContainers", []), "1.29+: a native sidecar"
    assert sidecar["restartPolicy"] == "Always"
    assert raw["metadata"]["annotations"]["liberator.io/injected"] == "shop"
    env_vars = {v["name"]: v for v in sidecar["env"]}
    assert env_vars["LIBERATOR_MONGO_URI"]["valueFrom"]["secretKeyRef"] == {
        "name": "shop-mongo",
        "key": "uri",
    }
    assert env_vars["LIBERATOR_COLLECTION"]["value"] == "shop"
    assert env_vars["LIBERATOR_TOPIC"]["value"] == "shop-events"
    assert env_vars["LIBERATOR_PUBLISHER"]["value"] == f"{ns}/shop"
    assert env_vars["PUBSUB_EMULATOR_HOST"]["value"] == env.emulator
    assert env_vars["LIBERATOR_REDIS_URL"]["value"] == env.redis_url

    other = env.api.sanitize_for_serialization(
        env.core.create_namespaced_pod(ns, pod_body("other", {"app": "billing"}))
    )
    assert sidecars(other) == []
    opted = env.api.sanitize_for_serialization(
        env.core.create_namespaced_pod(
            ns, pod_body("opted", {"app": "shop"}, {"liberator.io/inject": "false"})
        )
    )
    assert sidecars(opted) == []

    # The same pod again, carrying its sidecar already: still exactly one.
    again = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "again",
            "labels": raw["metadata"]["labels"],
            "annotations": raw["metadata"]["annotations"],
        },
        "spec": {
            "containers": raw["spec"]["containers"],
            "initContainers": raw["spec"]["initContainers"],
        },
    }
    twice = env.api.sanitize_for_serialization(env.core.create_namespaced_pod(ns, again))
    assert [c["name"] for c in sidecars(twice)] == ["liberator-shop"]

    # Dry run: the answer shows the sidecar, nothing is stored.
    dry = env.core.create_namespaced_pod(ns, pod_body("dry", {"app": "shop"}), dry_run="All")
    assert len(sidecars(dry)) == 1
    assert not _exists(lambda: env.core.read_namespaced_pod("dry", ns))

    # PODS counts pods whose sidecar runs. There is no kubelet here: the pods stay Pending until
    # the test writes what a kubelet would report.
    eventually(
        lambda: env.publisher(ns, "shop").get("status", {}).get("pods") == 0,
        what="status.pods 0 while both injected pods are Pending",
    )
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    env.core.patch_namespaced_pod_status(
        "match",
        ns,
        {
            "status": {
                "phase": "Running",
                "initContainerStatuses": [
                    {
                        "name": "liberator-shop",
                        "image": "x",
                        "imageID": "",
                        "ready": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": now}},
                    }
                ],
                "containerStatuses": [
                    {
                        "name": "app",
                        "image": "busybox",
                        "imageID": "",
                        "ready": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": now}},
                    }
                ],
            }
        },
    )
    env.core.patch_namespaced_pod_status(
        "again",
        ns,
        {
            "status": {
                "phase": "Pending",
                "initContainerStatuses": [
                    {
                        "name": "liberator-shop",
                        "image": "x",
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"waiting": {"reason": "ContainerCreating"}},
                    }
                ],
            }
        },
    )
    eventually(
        lambda: env.publisher(ns, "shop").get("status", {}).get("pods") == 1,
        what="status.pods to count the one pod whose sidecar runs",
    )


def test_kube_system_is_never_injected(env: Env, operator: Operator) -> None:
    ns = "kube-system"
    name = f"sys-{os.getpid()}-{int(time.time())}"
    add_publisher(env, ns, name)
    pod = env.core.create_namespaced_pod(ns, pod_body(name, {"app": name}))
    assert sidecars(env.api.sanitize_for_serialization(pod)) == []


def test_two_publishers_give_two_sidecars(env: Env, operator: Operator, ns: str) -> None:
    for name, labels in (("alpha", {"tier": "api"}), ("beta", {"app": "two"})):
        secret(env, ns, f"{name}-mongo", uri="mongodb://x")
        env.create(ns, "entitypublishers", ep_body(env, name, labels))
    pod = env.api.sanitize_for_serialization(
        env.core.create_namespaced_pod(ns, pod_body("both", {"tier": "api", "app": "two"}))
    )
    found = sidecars(pod)
    assert [c["name"] for c in found] == ["liberator-alpha", "liberator-beta"]
    assert [c["ports"][0]["containerPort"] for c in found] == [8099, 8100]


# -- seeds ----------------------------------------------------------------------------------------


def job_status_patch(e: Env, ns: str, name: str, status: dict[str, Any]) -> None:
    e.batch.patch_namespaced_job_status(name, ns, {"status": status})


def test_seed_job_and_phases(env: Env, operator: Operator, ns: str) -> None:
    add_publisher(env, ns, "inv")
    seed = seed_body(
        "initial", {"publisher": "inv", "mode": "history", "filter": {"status": "open"}}
    )
    env.kubectl("apply", "-n", ns, "-f", "-", stdin=json.dumps(seed))
    job = eventually(
        lambda: env.batch.read_namespaced_job("liberator-seed-initial", ns), what="the seed Job"
    )
    args = job.spec.template.spec.containers[0].command
    assert args[:2] == ["liberator", "seed"]
    assert args[args.index("--mode") + 1] == "history"
    assert args[args.index("--filter") + 1] == '{"status":"open"}'
    assert job.metadata.owner_references[0].kind == "EventSeed"
    pending = eventually(
        when(
            lambda: env.seed(ns, "initial"), lambda s: s.get("status", {}).get("phase") == "Pending"
        ),
        what="phase Pending",
    )
    assert pending["status"]["job"] == "liberator-seed-initial"
    # Re-applying creates no second Job.
    env.kubectl("apply", "-n", ns, "-f", "-", stdin=json.dumps(seed))

    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    job_status_patch(env, ns, "liberator-seed-initial", {"active": 1, "startTime": now})
    eventually(
        lambda: env.seed(ns, "initial")["status"].get("phase") == "Running", what="phase Running"
    )
    r = redis_lib.Redis.from_url(env.redis_url)
    r.hset(
        seed_key(f"{ns}/initial"),
        mapping={
            "phase": "Running",
            "seeded": 40,
            "skipped": 2,
            "failed": 0,
            "total": 100,
            "startedAt": now,
        },
    )
    eventually(
        lambda: env.seed(ns, "initial")["status"].get("seeded") == 40,
        what="the seeded count from Redis",
    )
    table = env.kubectl("get", "eventseeds", "-n", ns).stdout.splitlines()
    assert table[0].split() == ["NAME", "PUBLISHER", "MODE", "PHASE", "SEEDED", "AGE"]
    assert table[1].split()[:5] == ["initial", "inv", "history", "Running", "40"]

    r.hset(
        seed_key(f"{ns}/initial"), mapping={"phase": "Succeeded", "seeded": 98, "completedAt": now}
    )
    job_status_patch(
        env,
        ns,
        "liberator-seed-initial",
        {
            "active": 0,
            "succeeded": 1,
            "completionTime": now,
            "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now},
                {"type": "Complete", "status": "True", "lastTransitionTime": now},
            ],
        },
    )
    done = eventually(
        when(lambda: env.seed(ns, "initial"), lambda s: s["status"].get("phase") == "Succeeded"),
        what="phase Succeeded",
    )
    assert done["status"]["seeded"] == 98
    assert done["status"]["completionTime"] == now
    assert condition(done, "Complete")["status"] == "True"
    assert len(env.batch.list_namespaced_job(ns).items) == 1


def test_failed_job_fails_the_seed(env: Env, operator: Operator, ns: str) -> None:
    add_publisher(env, ns, "f")
    env.create(ns, "eventseeds", seed_body("once", {"publisher": "f"}))
    eventually(lambda: env.batch.read_namespaced_job("liberator-seed-once", ns), what="the Job")
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    job_status_patch(
        env,
        ns,
        "liberator-seed-once",
        {
            "startTime": now,
            "failed": 4,
            "conditions": [
                {
                    "type": "FailureTarget",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "lastTransitionTime": now,
                },
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "lastTransitionTime": now,
                },
            ],
        },
    )
    failed = eventually(
        when(lambda: env.seed(ns, "once"), lambda s: s.get("status", {}).get("phase") == "Failed"),
        what="phase Failed",
    )
    assert condition(failed, "Complete") | {"lastTransitionTime": ""} == {
        "type": "Complete",
        "status": "False",
        "reason": "Failed",
        "message": "Job liberator-seed-once failed",
        "lastTransitionTime": "",
        "observedGeneration": 1,
    }


def test_seed_without_its_publisher_waits(env: Env, operator: Operator, ns: str) -> None:
    env.create(ns, "eventseeds", seed_body("early", {"publisher": "nobody"}))
    cond = eventually(
        lambda: condition(env.seed(ns, "early"), "PublisherFound") or None, what="PublisherFound"
    )
    assert cond["status"] == "False"
    assert cond["reason"] == "PublisherNotFound"
    assert "nobody" in cond["message"]
    # The spec is immutable: the message says what works instead of "fix spec.publisher".
    assert "delete this EventSeed and apply it again" in cond["message"]
    assert "fix spec.publisher" not in cond["message"]
    assert env.seed(ns, "early")["status"]["phase"] == "Pending"
    assert env.batch.list_namespaced_job(ns).items == []


# -- restart, peering -----------------------------------------------------------------------------


def test_operator_restart_resumes_and_creates_nothing_twice(
    env: Env, operator: Operator, ns: str
) -> None:
    add_publisher(env, ns, "r1")
    secret(env, ns, "r2-mongo", uri="mongodb://x")
    env.create(ns, "eventseeds", seed_body("rs", {"publisher": "r1"}))
    before = with_condition(env, ns, "r1", "Ready", status="True")
    eventually(lambda: env.batch.read_namespaced_job("liberator-seed-rs", ns), what="the Job")

    operator.stop()
    # While it is down: a spec change to r1, and a new publisher r2.
    env.patch(ns, "entitypublishers", "r1", {"spec": {"sidecar": {"logLevel": "DEBUG"}}})
    env.create(ns, "entitypublishers", ep_body(env, "r2", {"app": "r2"}))
    operator.start()
    wait_webhook_live(env, operator)

    with_condition(env, ns, "r2", "Ready", status="True")
    after = publisher_once(
        env,
        ns,
        "r1",
        lambda p: p["status"]["observedGeneration"] == p["metadata"]["generation"],
        what="r1's spec change to be handled after the restart",
    )
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert (
        condition(after, "Ready")["lastTransitionTime"]
        == condition(before, "Ready")["lastTransitionTime"]
    ), "Ready never flapped"
    assert after["status"]["provisioned"] == before["status"]["provisioned"]
    assert len(after["status"]["provisioned"]["topics"]) == len(
        set(after["status"]["provisioned"]["topics"])
    )
    assert [j.metadata.name for j in env.batch.list_namespaced_job(ns).items] == [
        "liberator-seed-rs"
    ]
    # A few more ticks of the seed timer: still one Job.
    time.sleep(3)
    assert len(env.batch.list_namespaced_job(ns).items) == 1


def test_peering_lets_one_replica_act(
    env: Env, operator: Operator, unique: str, tmp_path: Path
) -> None:
    crd, peering = yaml.safe_load_all((ROOT / "deploy" / "base" / "peering.yaml").read_text())
    env.kubectl("apply", "-f", "-", stdin=json.dumps(crd))
    env.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/clusterkopfpeerings.kopf.dev"
    )
    env.kubectl("apply", "-f", "-", stdin=json.dumps(peering))
    operator.stop()  # the standalone operator would act too

    def peers() -> dict[str, Any]:
        body: dict[str, Any] = env.custom.get_cluster_custom_object(
            "kopf.dev", "v1", "clusterkopfpeerings", "liberator"
        )
        return dict(body.get("status") or {})

    # One replica first: a replica acts until it has seen a higher peer's record, so the
    # second starts once the first has registered (as in a rolling update).
    high = Operator(env, tmp_path / "high.log", "--priority", "200", configure=False)
    low: Operator | None = None
    try:
        eventually(lambda: len(peers()) == 1, what="the first peer to register")
        # The low replica points the webhook configuration at itself: a paused replica serves.
        low = Operator(env, tmp_path / "low.log", "--priority", "100")
        found = eventually(lambda: (p := peers()) and len(p) == 2 and p, what="two peers")
        assert sorted(peer["priority"] for peer in found.values()) == [100, 200]
        # The lower priority replica starts paused and stays so while the other one lives.
        assert "Resuming operations" not in low.text()
        wait_webhook_live(env, low)
        assert "Resuming operations" not in low.text()

        ns = make_namespace(env, f"peer-{unique}")
        env.create(ns, "entitypublishers", ep_body(env, "p1", {"app": "p1"}))
        eventually(lambda: condition(env.publisher(ns, "p1"), "Ready"), what="p1 handled")
        assert f"[{ns}/p1]" in high.text()
        assert f"[{ns}/p1]" not in low.text()
        assert "Resuming operations" not in low.text()

        high.stop()
        eventually(
            lambda: "Resuming operations" in low.text(),
            what="the low-priority replica to take over",
        )
        env.create(ns, "entitypublishers", ep_body(env, "p2", {"app": "p2"}))
        eventually(lambda: condition(env.publisher(ns, "p2"), "Ready"), what="p2 handled")
        assert f"[{ns}/p2]" in low.text()
    finally:
        high.stop()
        if low is not None:
            low.stop()
        operator.start()
        wait_webhook_live(env, operator)


# -- the injected sidecar runs --------------------------------------------------------------------


def resolve_env(e: Env, namespace: str, pod_name: str, container: dict[str, Any]) -> dict[str, str]:
    """The environment the kubelet would give the container."""
    values: dict[str, str] = {}
    for var in container["env"]:
        if "value" in var:
            values[var["name"]] = var["value"]
        elif "secretKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["secretKeyRef"]
            data = e.core.read_namespaced_secret(ref["name"], namespace).data
            values[var["name"]] = base64.b64decode(data[ref["key"]]).decode()
        elif var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            values[var["name"]] = pod_name
        else:
            pytest.fail(f"unexpected env source in the injected container: {var}")
    return values


@pytest.fixture()
def sidecar_log(tmp_path: Path) -> Path:
    return tmp_path / "sidecar.log"


def test_injected_sidecar_runs_and_publishes(  # noqa: PLR0917
    env: Env,
    operator: Operator,
    ns: str,
    mongo_uri: str,
    unique: str,
    sidecar_log: Path,
) -> None:
    if shutil.which("liberator", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("the liberator console script is not installed in the venv")
    secret(env, ns, "live-mongo", uri=mongo_uri)
    body = ep_body(
        env,
        "live",
        {"app": "live"},
        mongo={
            "uriSecretRef": {"name": "live-mongo"},
            "database": f"db{unique}",
            "collection": "quotes",
        },
        pubsub={
            "project": env.project,
            "topic": f"live-{unique}",
            "subscriptions": [{"name": f"live-sub-{unique}"}],
        },
        sidecar={"leaseTtlSeconds": 5},
    )
    env.create(ns, "entitypublishers", body)
    condition_once(env, ns, "live", "Ready", status="True")
    pod = env.api.sanitize_for_serialization(
        env.core.create_namespaced_pod(ns, pod_body("live-0", {"app": "live"}))
    )
    [container] = sidecars(pod)
    values = resolve_env(env, ns, "live-0", container)
    # The one deviation from the pod: a free local port, since 8099 may be taken on this host.
    port = free_port()
    values["LIBERATOR_HTTP_PORT"] = str(port)
    argv = [str(Path(sys.executable).with_name(container["command"][0])), *container["command"][1:]]
    log = sidecar_log
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={"PATH": os.environ["PATH"], **values},
            start_new_session=True,
        )
    subscriber = pubsub_v1.SubscriberClient()
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"sidecar exited {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        eventually(ready, what="the sidecar's /readyz", deadline=90)
        eventually(
            lambda: condition(env.publisher(ns, "live"), "Publishing").get("reason") == "Leading",
            what="the sidecar to lead",
            deadline=90,
        )
        assert env.publisher(ns, "live")["status"]["leader"] == "live-0"
        mongo = pymongo.MongoClient(mongo_uri)
        mongo[f"db{unique}"]["quotes"].insert_one({"_id": "q-1", "amount": 5})
        sub = f"projects/{env.project}/subscriptions/live-sub-{unique}"
        received: list[Any] = []

        def pulled() -> bool:
            response = subscriber.pull(request={"subscription": sub, "max_messages": 10}, timeout=5)
            received.extend(m.message for m in response.received_messages)
            if response.received_messages:
                subscriber.acknowledge(
                    request={
                        "subscription": sub,
                        "ack_ids": [m.ack_id for m in response.received_messages],
                    }
                )
            return any(m.attributes.get("ce-subject") == "q-1" for m in received)

        eventually(
            pulled,
            what=f"the event on the provisioned subscription (sidecar log {log})",
            deadline=90,
        )
        event = next(m for m in received if m.attributes.get("ce-subject") == "q-1")
        assert event.attributes["ce-type"] == "quote.created"
        assert json.loads(event.data)["amount"] == 5
        mongo.close()
    finally:
        subscriber.close()
        commands.stop(proc)

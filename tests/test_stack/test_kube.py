"""Smoke tests of the local Kubernetes API server (hack/liberator_stack/kube.py) against the real
one.

They check what the operator relies on: CRDs with printer columns, a status subresource and CEL,
watches, a mutating admission webhook served from this machine, native sidecars, kubectl, and a
restart that keeps state.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from liberator_stack import Server, Stack, StackError
from liberator_stack import kube as kube_module
from tests.support import waiting

DATA = Path(__file__).parent / "data"
GROUP, VERSION, PLURAL = "smoke.liberator.io", "v1alpha1", "widgets"
MUTATED_LABEL = "smoke.liberator.io/mutated"
DEADLINE = 60.0


def eventually(check: Callable[[], Any], *, what: str, deadline: float = DEADLINE) -> Any:
    """The API server applies some changes asynchronously (CRD establishment, webhook
    registration): poll for them."""
    return waiting.eventually(check, what=what, deadline=deadline, every=0.2)


@pytest.fixture()
def api(kube: Server) -> Iterator[client.ApiClient]:
    configuration = client.Configuration()
    # A private configuration: loading must not change the process-wide default client.
    config.load_kube_config(
        config_file=kube.exports["KUBECONFIG"], client_configuration=configuration
    )
    with client.ApiClient(configuration) as api_client:
        yield api_client


@pytest.fixture()
def namespace(api: client.ApiClient, unique: str) -> str:
    name = f"smoke-{unique}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    # Namespaces are not deleted afterwards: without a controller manager they would only hang in
    # Terminating; unique names keep tests apart.
    return name


@pytest.fixture()
def widgets(api: client.ApiClient) -> client.CustomObjectsApi:
    """The Widget CRD from tests/test_stack/data/widgets.yaml, applied and Established."""
    body = yaml.safe_load((DATA / "widgets.yaml").read_text())
    extensions = client.ApiextensionsV1Api(api)
    try:
        extensions.create_custom_resource_definition(body)
    except ApiException as error:
        if error.status != 409:  # applied by an earlier test of this session
            raise

    def established() -> bool:
        crd = extensions.read_custom_resource_definition(body["metadata"]["name"])
        return any(
            c.type == "Established" and c.status == "True" for c in crd.status.conditions or []
        )

    eventually(established, what="CRD widgets Established")
    return client.CustomObjectsApi(api)


def widget(name: str, size: int, colour: str = "green") -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"size": size, "colour": colour},
    }


# -- pure checks of the build module --------------------------------------------------------------


def test_go_mod_pins_one_release_and_matching_staging_modules() -> None:
    go_mod = kube_module.read_go_mod()
    version = kube_module.pinned_version(go_mod)
    assert version.startswith("v1.")
    kube_module.check_staging_replaces(go_mod, version)
    assert "k8s.io/apiserver => k8s.io/apiserver v0." + version[3:] in go_mod


@pytest.mark.parametrize(
    "text",
    [
        "module x\n",
        "require (\n\tk8s.io/kubernetes latest\n)\n",
        "require k8s.io/kubernetes v1.34.4\nrequire k8s.io/kubernetes v1.34.3\n",
    ],
)
def test_pinned_version_rejects_a_go_mod_without_one_release(text: str) -> None:
    with pytest.raises(StackError, match=r"require k8s\.io/kubernetes"):
        kube_module.pinned_version(text)


def test_pinned_version_reads_block_and_line_forms() -> None:
    assert kube_module.pinned_version("require k8s.io/kubernetes v1.34.4\n") == "v1.34.4"
    block = "require (\n\tk8s.io/kubernetes v1.35.4 // the release\n\tk8s.io/api v0.0.0\n)\n"
    assert kube_module.pinned_version(block) == "v1.35.4"


def test_staging_replace_of_another_release_is_named() -> None:
    go_mod = (
        "require k8s.io/kubernetes v1.34.4\nreplace (\n"
        "\tk8s.io/api => k8s.io/api v0.34.4\n"
        "\tk8s.io/client-go => k8s.io/client-go v0.34.3\n)\n"
    )
    with pytest.raises(StackError, match=r"k8s\.io/client-go.*k8s\.io/client-go v0\.34\.4"):
        kube_module.check_staging_replaces(go_mod, "v1.34.4")
    with pytest.raises(StackError, match=r"no 'replace k8s\.io/<name>"):
        kube_module.check_staging_replaces("require k8s.io/kubernetes v1.34.4\n", "v1.34.4")


# -- the running API server -----------------------------------------------------------------------


@pytest.mark.kube
def test_server_reports_the_pinned_release(api: client.ApiClient, kube: Server) -> None:
    info = client.VersionApi(api).get_code()
    assert info.git_version == kube.details["version"]
    assert info.git_version == kube_module.pinned_version(kube_module.read_go_mod())


@pytest.mark.kube
def test_crd_create_get_list_watch_and_status(
    widgets: client.CustomObjectsApi, namespace: str
) -> None:
    created = widgets.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, widget("first", 3)
    )
    assert created["metadata"]["generation"] == 1
    got = widgets.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "first")
    assert got["spec"] == {"size": 3, "colour": "green"}

    listed = widgets.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    assert [item["metadata"]["name"] for item in listed["items"]] == ["first"]

    # Watch from the list's version: only changes after it arrive, so ADDED is a live event.
    widgets.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, widget("second", 5))
    seen: list[tuple[str, str]] = []
    stream = watch.Watch()
    for event in stream.stream(
        widgets.list_namespaced_custom_object,
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        resource_version=listed["metadata"]["resourceVersion"],
        timeout_seconds=int(DEADLINE),
    ):
        seen.append((event["type"], event["object"]["metadata"]["name"]))
        if seen[-1] == ("ADDED", "second"):
            stream.stop()
    assert seen == [("ADDED", "second")]

    patched = widgets.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        "first",
        {"status": {"phase": "Ready"}, "spec": {"size": 9}},
    )
    assert patched["status"] == {"phase": "Ready"}
    # The status subresource ignores spec, and status writes do not bump the generation.
    assert patched["spec"]["size"] == 3
    assert patched["metadata"]["generation"] == 1
    # ... and the main resource ignores status.
    updated = widgets.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        "first",
        {"spec": {"size": 4}, "status": {"phase": "Broken"}},
    )
    assert updated["spec"]["size"] == 4
    assert updated["status"] == {"phase": "Ready"}
    assert updated["metadata"]["generation"] == 2


@pytest.mark.kube
@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({"size": 0}, "spec.size", "should be greater than or equal to 1"),
        ({"size": 2, "colour": "purple"}, "spec.colour", "Unsupported value"),
        ({"size": "big"}, "spec.size", "must be of type integer"),
        ({"colour": "red"}, "spec.size", "Required value"),
        ({"size": 11, "colour": "blue"}, "spec.size", "spec.size above 10 needs spec.colour red"),
    ],
)
def test_bad_widget_is_rejected_naming_the_field(
    widgets: client.CustomObjectsApi, namespace: str, spec: dict[str, Any], field: str, message: str
) -> None:
    body = {**widget("bad", 1), "spec": spec}
    with pytest.raises(ApiException) as raised:
        widgets.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    assert raised.value.status == 422
    causes = json.loads(raised.value.body)["details"]["causes"]
    assert any(c["field"] == field and message in c["message"] for c in causes), causes
    # Nothing was stored.
    listed = widgets.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    assert listed["items"] == []


@pytest.mark.kube
def test_kubectl_get_shows_printer_columns(
    widgets: client.CustomObjectsApi, namespace: str, kube: Server, tmp_path: Path
) -> None:
    widgets.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, widget("shown", 7, "blue")
    )
    widgets.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "shown", {"status": {"phase": "Running"}}
    )
    for resource in (PLURAL, "wdg"):
        result = subprocess.run(
            [
                "kubectl",
                "--kubeconfig",
                kube.exports["KUBECONFIG"],
                "--cache-dir",
                str(tmp_path / "cache"),
                "get",
                resource,
                "-n",
                namespace,
            ],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        header, *rows = [line.split() for line in result.stdout.splitlines()]
        assert header == ["NAME", "SIZE", "COLOUR", "PHASE", "AGE"]
        assert len(rows) == 1
        assert rows[0][:4] == ["shown", "7", "blue", "Running"]
        assert rows[0][4][-1] in "smhd"  # an age such as 3s


class _Webhook(ThreadingHTTPServer):
    """An HTTPS admission webhook that adds MUTATED_LABEL by JSONPatch and records requests."""

    daemon_threads = True

    def __init__(self, tls: kube_module.KeyPair, directory: Path) -> None:
        super().__init__(("127.0.0.1", 0), _WebhookHandler)
        cert, key = tls.write(directory, "webhook")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.reviews: list[dict[str, Any]] = []


class _WebhookHandler(BaseHTTPRequestHandler):
    server: _Webhook

    def do_POST(self) -> None:
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.reviews.append(review)
        patch = [
            {
                "op": "add",
                "path": "/metadata/labels/" + MUTATED_LABEL.replace("/", "~1"),
                "value": "true",
            }
        ]
        body = json.dumps(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {
                    "uid": review["request"]["uid"],
                    "allowed": True,
                    "patchType": "JSONPatch",
                    "patch": base64.b64encode(json.dumps(patch).encode()).decode(),
                },
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet


def pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
    }


@pytest.mark.kube
def test_mutating_webhook_patches_matching_pods_only(
    api: client.ApiClient, namespace: str, unique: str, tmp_path: Path
) -> None:
    ca = kube_module.new_ca("smoke-webhook-ca")
    server = _Webhook(kube_module.issue_cert(ca, "webhook", hosts=["127.0.0.1"]), tmp_path)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    core = client.CoreV1Api(api)
    admission = client.AdmissionregistrationV1Api(api)
    name = f"smoke-{unique}"
    selected = {"smoke.liberator.io/webhook": unique}
    admission.create_mutating_webhook_configuration(
        {
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": f"mutate.{unique}.smoke.liberator.io",
                    "clientConfig": {
                        "url": f"https://127.0.0.1:{server.server_address[1]}/mutate",
                        "caBundle": base64.b64encode(ca.cert_pem).decode(),
                    },
                    "rules": [
                        {
                            "operations": ["CREATE"],
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "resources": ["pods"],
                        }
                    ],
                    # Scoped to this test's namespace and labelled pods: other tests never see it.
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": namespace}
                    },
                    "objectSelector": {"matchLabels": selected},
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                    "timeoutSeconds": 5,
                    "failurePolicy": "Fail",
                }
            ],
        }
    )
    try:
        # Registration reaches the admission chain asynchronously; probe with dry-run creates.
        def mutated_dry_run() -> bool:
            probe = core.create_namespaced_pod(namespace, pod("probe", selected), dry_run="All")
            return (probe.metadata.labels or {}).get(MUTATED_LABEL) == "true"

        eventually(mutated_dry_run, what="webhook mutates a dry-run pod")
        assert server.reviews[-1]["request"]["dryRun"] is True

        created = core.create_namespaced_pod(namespace, pod("mutated", selected))
        assert created.metadata.labels == {**selected, MUTATED_LABEL: "true"}
        stored = core.read_namespaced_pod("mutated", namespace)
        assert stored.metadata.labels[MUTATED_LABEL] == "true"
        request = server.reviews[-1]["request"]
        assert (request["operation"], request["namespace"], request["dryRun"]) == (
            "CREATE",
            namespace,
            False,
        )
        assert request["object"]["metadata"]["name"] == "mutated"

        calls = len(server.reviews)
        plain = core.create_namespaced_pod(namespace, pod("plain", {"app": "plain"}))
        assert MUTATED_LABEL not in (plain.metadata.labels or {})
        assert len(server.reviews) == calls
    finally:
        admission.delete_mutating_webhook_configuration(name)
        server.shutdown()
        server.server_close()
    for pod_name in ("mutated", "plain"):
        # Unscheduled pods go at once: no kubelet has to confirm.
        core.delete_namespaced_pod(pod_name, namespace, grace_period_seconds=0)


@pytest.mark.kube
def test_native_sidecar_is_accepted(api: client.ApiClient, namespace: str) -> None:
    body = {
        "metadata": {"name": "with-sidecar"},
        "spec": {
            "initContainers": [{"name": "sidecar", "image": "busybox", "restartPolicy": "Always"}],
            "containers": [{"name": "app", "image": "busybox"}],
        },
    }
    created = client.CoreV1Api(api).create_namespaced_pod(namespace, body)
    # With the SidecarContainers gate off the field would be dropped (or rejected).
    assert created.spec.init_containers[0].restart_policy == "Always"


@pytest.mark.kube
def test_start_on_a_busy_port_names_it_and_leaves_the_server_alone(
    kube: Server, api: client.ApiClient, tmp_path: Path
) -> None:
    port = int(kube.details["port"])
    with pytest.raises(StackError, match=rf"kube-apiserver port {port} .*not free"):
        kube_module.start(tmp_path, port)
    assert not (tmp_path / "etcd.log").exists()
    assert kube.alive()
    assert client.CoreV1Api(api).read_namespace("default").metadata.name == "default"


@pytest.mark.kube
def test_restart_on_the_same_port_keeps_state_and_kubeconfig(
    stack: Stack, kube: Server, api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "kept"}, "data": {"answer": "42"}}
    )
    kubeconfig = Path(kube.exports["KUBECONFIG"]).read_text()

    restarted = stack.restart("kube")

    assert restarted.details["port"] == kube.details["port"]
    assert Path(restarted.exports["KUBECONFIG"]).read_text() == kubeconfig
    assert not kube.alive()
    # The client made before the restart still authenticates and finds the data.
    assert core.read_namespaced_config_map("kept", namespace).data == {"answer": "42"}


@pytest.mark.kube
def test_a_port_taken_before_bind_is_picked_again(
    kube: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process holds the first port that start() picks, as if it took it after the pick.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        picks = iter([taken.getsockname()[1]])
        real_free_port = kube_module.free_port
        monkeypatch.setattr(kube_module, "free_port", lambda: next(picks, None) or real_free_port())
        server = kube_module.start(tmp_path)
        try:
            assert server.alive()
            logs = "".join(log.read_text() for log in server.logs().values())
            assert "address already in use" in logs
            used = {server.details["port"], server.details["etcd"].rsplit(":", 1)[1]}
            assert str(taken.getsockname()[1]) not in used
            configuration = client.Configuration()
            config.load_kube_config(
                config_file=server.exports["KUBECONFIG"], client_configuration=configuration
            )
            with client.ApiClient(configuration) as api_client:
                assert client.CoreV1Api(api_client).read_namespace("default").metadata.name
        finally:
            server.stop()
    assert not any(proc.alive() for proc in server.procs)

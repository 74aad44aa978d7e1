"""deploy/ and examples/ are accepted by a real kube-apiserver (server-side dry-run).

What the local API server checks here, and what it cannot:

- ``kubectl kustomize deploy/`` and ``deploy/overlays/local`` are rendered and applied with
  ``kubectl apply --server-side --dry-run=server``: every object goes through the API server's
  decoding, defaulting, OpenAPI/CEL validation and admission, and nothing is stored.
- The CRDs (ours and kopf's peering) are applied for real first: a custom resource whose CRD is
  created in the same dry-run cannot resolve.
- **Weakened check.** cert-manager is not on the local stack. The test installs *stand-in* CRDs for
  ``cert-manager.io/v1`` ``Issuer`` and ``Certificate`` that accept any spec
  (``x-kubernetes-preserve-unknown-fields``). So the two cert-manager objects are checked for
  kind, group, version and scope only; their fields are NOT validated against cert-manager's
  schema (docs/operations.md says the same).
- **Weakened check**, the same way: the Prometheus Operator is not on the local stack either, so
  ``monitoring.coreos.com/v1`` ``PrometheusRule``, ``PodMonitor`` and ``ServiceMonitor`` of
  ``deploy/components/monitoring`` are checked against stand-in CRDs (kind, group, version and
  scope only). Their Service and ConfigMap are validated for real. promtool checks the rules
  themselves (tests/e2e/test_monitoring.py).
- The local API server has no kubelet: nothing runs. Pod templates are checked by PodSecurity
  admission ("restricted") as pods in a namespace that enforces it, which is what
  ``liberator-system`` declares.
- The operator's RBAC is applied for real (under unique names) and the API server's authorizer is
  asked about every call the operator makes, and about calls it must not be able to make.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from liberator_stack import Server
from liberator_stack.deploy import render
from tests.support import commands, kustomize, waiting

pytestmark = pytest.mark.kube

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAY = DEPLOY / "overlays" / "local"
SYSTEM_NS = "liberator-system"
DEADLINE = 90.0  # seconds; generous, the machine is shared

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def stand_in_crd(kind: str, plural: str, group: str = "cert-manager.io") -> dict[str, Any]:
    """A ``group``/v1 CRD that accepts any spec: kind and scope only, NOT the schema."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}", "labels": {"liberator.io/test-stand-in": "true"}},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


def poll(what: str, check: Callable[[], bool]) -> None:
    waiting.eventually(check, what=what, deadline=DEADLINE, every=0.5)


@pytest.fixture()
def kubectl(kube: Server, tmp_path: Path) -> Kubectl:
    env = {**os.environ, "KUBECONFIG": kube.exports["KUBECONFIG"]}

    def run(
        *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        # A private discovery cache: CRDs created by the test are seen at once.
        result = commands.run(
            ["kubectl", f"--cache-dir={tmp_path / 'kube-cache'}", *args], env=env, stdin=stdin
        )
        if check:
            assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result

    return run


def to_stream(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def ensure_namespace(kubectl: Kubectl, name: str, labels: dict[str, str] | None = None) -> None:
    """Create ``name`` for real if absent (idempotent; other tests may share the server)."""
    doc = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels or {}},
    }
    if kubectl("get", "namespace", name, check=False).returncode != 0:
        kubectl("create", "-f", "-", stdin=json.dumps(doc), check=False)
    poll(
        f"namespace {name} exists",
        lambda: kubectl("get", "namespace", name, check=False).returncode == 0,
    )


def install_crds(kubectl: Kubectl, crds: list[dict[str, Any]]) -> None:
    """Apply CRDs for real and wait until their resources are served."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=to_stream(crds))
    for crd in crds:
        name = crd["metadata"]["name"]
        kubectl("wait", "--for=condition=Established", f"crd/{name}", f"--timeout={DEADLINE:.0f}s")
        poll(
            f"{name} is served",
            lambda n=name: (
                kubectl("get", n, "-A", "--request-timeout=10s", check=False).returncode == 0
            ),
        )


@pytest.fixture()
def base() -> list[dict[str, Any]]:
    return render(DEPLOY)


@pytest.fixture()
def prepared(kubectl: Kubectl, base: list[dict[str, Any]]) -> Iterator[None]:
    crds = [d for d in base if d["kind"] == "CustomResourceDefinition"]
    install_crds(
        kubectl,
        [*crds, stand_in_crd("Issuer", "issuers"), stand_in_crd("Certificate", "certificates")],
    )
    # Unlabelled on purpose: enforcing "restricted" for real could refuse other tests' pods.
    ensure_namespace(kubectl, SYSTEM_NS)
    yield


def dry_run(kubectl: Kubectl, docs: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    return kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--dry-run=server",
        "--field-manager=liberator-test",
        "-f",
        "-",
        stdin=to_stream(docs),
        check=False,
    )


def assert_every_object_accepted(
    docs: list[dict[str, Any]], result: subprocess.CompletedProcess[str]
) -> None:
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == len(docs), result.stdout
    for doc in docs:
        kind = doc["kind"].lower()
        group = doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""
        ref = f"{kind}.{group}" if group else kind
        name = doc["metadata"]["name"]
        pattern = re.compile(rf"^{re.escape(ref)}/{re.escape(name)} \S+ \(server dry run\)$")
        assert any(pattern.match(line) for line in lines), (
            f"{doc['kind']} {name} is not reported as dry-run applied:\n{result.stdout}"
        )


# -- the base and the overlay ----------------------------------------------------------------


@pytest.mark.usefixtures("prepared")
def test_base_is_accepted_by_the_api_server(kubectl: Kubectl, base: list[dict[str, Any]]) -> None:
    kinds = {d["kind"] for d in base}
    # The list: namespace, CRDs, RBAC, operator, webhook, event store.
    assert {
        "Namespace",
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
        "Issuer",
        "Certificate",
        "MutatingWebhookConfiguration",
        "ConfigMap",
    } <= kinds
    assert {d["metadata"]["name"] for d in base if d["kind"] == "Deployment"} == {
        "liberator-operator",
        "liberator-eventstore",
    }
    assert_every_object_accepted(base, dry_run(kubectl, base))


@pytest.mark.usefixtures("prepared")
def test_local_overlay_is_accepted_by_the_api_server(kubectl: Kubectl) -> None:
    overlay = render(OVERLAY)
    deployments = {d["metadata"]["name"]: d for d in overlay if d["kind"] == "Deployment"}
    for deployment in deployments.values():
        assert deployment["spec"]["replicas"] == 1
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert "PUBSUB_EMULATOR_HOST" in env, deployment["metadata"]["name"]
    assert_every_object_accepted(overlay, dry_run(kubectl, overlay))


@pytest.mark.usefixtures("prepared")
def test_a_broken_manifest_is_refused_with_the_field_named(
    kubectl: Kubectl, base: list[dict[str, Any]]
) -> None:
    """The dry-run validates: a wrong field in the operator Deployment is refused, by name."""
    deployment = copy.deepcopy(
        next(
            d
            for d in base
            if d["kind"] == "Deployment" and d["metadata"]["name"] == "liberator-operator"
        )
    )
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = (
        "no-such-port-name-longer-than-fifteen"
    )
    result = dry_run(kubectl, [deployment])
    assert result.returncode != 0
    assert "livenessProbe.httpGet.port" in result.stderr, result.stderr


def test_pod_templates_pass_the_restricted_pod_security_standard(
    kubectl: Kubectl, base: list[dict[str, Any]], unique: str
) -> None:
    """Each Deployment's pod, created (dry-run) where PodSecurity enforces ``restricted``."""
    namespace = f"restricted-{unique}"
    system = next(d for d in base if d["kind"] == "Namespace")
    level = system["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
    assert level == "restricted"
    ensure_namespace(kubectl, namespace, {"pod-security.kubernetes.io/enforce": level})
    pods = []
    for deployment in (d for d in base if d["kind"] == "Deployment"):
        template = deployment["spec"]["template"]
        pods.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": deployment["metadata"]["name"],
                    "namespace": namespace,
                    "labels": template["metadata"]["labels"],
                },
                "spec": template["spec"],
            }
        )
    assert len(pods) == 2
    assert_every_object_accepted(pods, dry_run(kubectl, pods))
    # The control: the same pod without its securityContext is refused by PodSecurity.
    loose = copy.deepcopy(pods[0])
    del loose["spec"]["securityContext"]
    for container in loose["spec"]["containers"]:
        del container["securityContext"]
    result = dry_run(kubectl, [loose])
    assert result.returncode != 0
    assert 'violates PodSecurity "restricted' in result.stderr, result.stderr


@pytest.mark.usefixtures("prepared")
def test_monitoring_component_is_accepted_by_the_api_server(
    kubectl: Kubectl, base: list[dict[str, Any]], tmp_path: Path
) -> None:
    """What deploy/components/monitoring adds to the base, in an overlay as a user writes it."""
    install_crds(
        kubectl,
        [
            stand_in_crd(kind, f"{kind.lower()}s", "monitoring.coreos.com")
            for kind in ("PrometheusRule", "PodMonitor", "ServiceMonitor")
        ],
    )
    overlay = kustomize.overlay(
        tmp_path / "overlay", [DEPLOY / "base"], [DEPLOY / "components" / "monitoring"]
    )
    added = [d for d in render(overlay) if d not in base]
    assert sorted(d["kind"] for d in added) == [
        "ConfigMap",
        "PodMonitor",
        "PrometheusRule",
        "Service",
        "ServiceMonitor",
    ]
    assert_every_object_accepted(added, dry_run(kubectl, added))


# -- examples --------------------------------------------------------------------------------


def test_examples_are_accepted_by_the_api_server(
    kubectl: Kubectl, base: list[dict[str, Any]], unique: str
) -> None:
    """Every manifest in examples/ and examples/quickstart/, in namespaces of this test."""
    install_crds(kubectl, [d for d in base if d["kind"] == "CustomResourceDefinition"])
    paths = sorted([*ROOT.glob("examples/*.yaml"), *ROOT.glob("examples/quickstart/*.yaml")])
    assert paths
    docs = [d for path in paths for d in yaml.safe_load_all(path.read_text()) if d]
    # Fresh namespaces, so nothing collides with another test on the same server.
    names = {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
    names |= {d["metadata"]["namespace"] for d in docs if "namespace" in d["metadata"]}
    renamed = {n: f"{n}-{unique}" for n in names}
    for doc in docs:
        if doc["kind"] == "Namespace":
            doc["metadata"]["name"] = renamed[doc["metadata"]["name"]]
        elif "namespace" in doc["metadata"]:
            doc["metadata"]["namespace"] = renamed[doc["metadata"]["namespace"]]
    for namespace in renamed.values():
        ensure_namespace(kubectl, namespace)
    assert_every_object_accepted(docs, dry_run(kubectl, docs))


# -- RBAC -----------------------------------------------------------------------------------

# (verb, resource, why): each is a call the operator or kopf makes.
NEEDED = [
    ("list", "entitypublishers.liberator.io", "kopf watch; finalizer lists all publishers"),
    ("watch", "entitypublishers.liberator.io", "kopf watch"),
    ("get", "entitypublishers.liberator.io", "Cluster.get_custom (a seed's publisher)"),
    ("patch", "entitypublishers.liberator.io", "kopf annotations and finalizer"),
    ("patch", "entitypublishers.liberator.io/status", "conditions, Cluster.patch_custom_status"),
    ("list", "eventseeds.liberator.io", "kopf watch"),
    ("watch", "eventseeds.liberator.io", "kopf watch"),
    ("patch", "eventseeds.liberator.io", "kopf annotations"),
    ("patch", "eventseeds.liberator.io/status", "seed phase and counts"),
    ("list", "customresourcedefinitions.apiextensions.k8s.io", "kopf discovery"),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io", "kopf discovery"),
    ("list", "namespaces", "kopf namespace observation"),
    ("watch", "namespaces", "kopf namespace observation"),
    ("list", "clusterkopfpeerings.kopf.dev", "peering"),
    ("watch", "clusterkopfpeerings.kopf.dev", "peering"),
    ("patch", "clusterkopfpeerings.kopf.dev", "peering heartbeat"),
    ("create", "events", "kopf posts warnings"),
    ("list", "pods", "Cluster.list_pods (count injected pods)"),
    ("get", "secrets", "Cluster.secret_keys / secret_value"),
    ("get", "jobs.batch", "Cluster.get_job"),
    ("create", "jobs.batch", "Cluster.create_job"),
]
# Calls it must not be able to make.
REFUSED = [
    ("list", "secrets"),
    ("watch", "secrets"),
    ("create", "secrets"),
    ("patch", "pods"),
    ("delete", "pods"),
    ("create", "pods"),
    ("delete", "jobs.batch"),
    ("delete", "entitypublishers.liberator.io"),
    ("update", "entitypublishers.liberator.io"),
    ("create", "entitypublishers.liberator.io"),
    ("create", "mutatingwebhookconfigurations.admissionregistration.k8s.io"),
    ("create", "clusterroles.rbac.authorization.k8s.io"),
    ("get", "configmaps"),
    ("create", "deployments.apps"),
]


def test_operator_rbac_allows_its_calls_and_nothing_more(
    kubectl: Kubectl, base: list[dict[str, Any]], unique: str
) -> None:
    namespace = f"rbac-{unique}"
    ensure_namespace(kubectl, namespace)
    docs = copy.deepcopy(
        [
            d
            for d in base
            if d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")
            and d["metadata"]["name"] == "liberator-operator"
        ]
    )
    assert [d["kind"] for d in docs] == ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"]
    role = f"liberator-operator-{unique}"
    for doc in docs:
        if doc["kind"] == "ServiceAccount":
            doc["metadata"]["namespace"] = namespace
        else:
            doc["metadata"]["name"] = role
    binding = docs[2]
    binding["roleRef"]["name"] = role
    binding["subjects"][0]["namespace"] = namespace
    kubectl("apply", "--server-side", "-f", "-", stdin=to_stream(docs))
    user = f"system:serviceaccount:{namespace}:liberator-operator"

    def can(verb: str, resource: str) -> bool:
        result = kubectl(
            "auth", "can-i", verb, resource, f"--as={user}", "-n", namespace, check=False
        )
        return result.stdout.strip() == "yes"

    # The authorizer reads RBAC from a cache: wait until the binding is seen.
    poll("the RBAC binding takes effect", lambda: can("get", "secrets"))
    missing = [(v, r, why) for v, r, why in NEEDED if not can(v, r)]
    assert not missing, f"the operator needs these and is refused: {missing}"
    granted = [(v, r) for v, r in REFUSED if can(v, r)]
    assert not granted, f"more than least privilege: {granted}"

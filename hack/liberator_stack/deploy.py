"""Liberator in a cluster from ``deploy/overlays/local``, as a user applies it, plus what that
overlay leaves to the user: the webhook's serving Secret and its CA in the webhook
configuration (no cert-manager), and the address of the Pub/Sub emulator the host runs.

Used by the cluster tier (tests/test_cluster) and ``make demo``.
"""

from __future__ import annotations

import base64
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from liberator_stack import certs, images
from liberator_stack.process import StackError

if TYPE_CHECKING:
    from liberator_stack.stack import Stack

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "deploy" / "overlays" / "local"
NAMESPACE = "liberator-system"
WEBHOOK_SERVICE = "liberator-webhook"
WEBHOOK_SECRET = "liberator-webhook-tls"
OPERATOR = "liberator-operator"
EVENTSTORE = "liberator-eventstore"


def kubectl(
    kubeconfig: str | Path, *args: str, stdin: str | None = None, timeout: float = 300
) -> str:
    result = subprocess.run(
        ["kubectl", f"--kubeconfig={kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise StackError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def render(overlay: Path = OVERLAY) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if out.returncode != 0:
        raise StackError(f"kubectl kustomize {overlay} failed: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def webhook_tls() -> tuple[certs.KeyPair, certs.KeyPair]:
    """A CA and the serving certificate of the webhook Service it signs."""
    ca = certs.new_ca("liberator-webhook-ca")
    service = f"{WEBHOOK_SERVICE}.{NAMESPACE}.svc"
    serving = certs.issue_cert(ca, service, hosts=(service, f"{service}.cluster.local"))
    return ca, serving


def manifests(
    exports: dict[str, str], *, operator_replicas: int = 2, eventstore: bool = False
) -> list[dict[str, Any]]:
    """The rendered overlay with the local servers' addresses, the Secret and the caBundle."""
    ca, serving = webhook_tls()
    docs: list[dict[str, Any]] = []
    for doc in render():
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "Deployment" and name == EVENTSTORE and not eventstore:
            continue
        if kind == "MutatingWebhookConfiguration":
            for hook in doc["webhooks"]:
                hook["clientConfig"]["caBundle"] = base64.b64encode(ca.cert_pem).decode()
        if kind == "Deployment":
            if name == OPERATOR:
                doc["spec"]["replicas"] = operator_replicas
            for container in doc["spec"]["template"]["spec"]["containers"]:
                for env in container.get("env", []):
                    if env["name"] == "PUBSUB_EMULATOR_HOST":
                        # No cluster DNS here: the emulator is a host process on the node IP.
                        env["value"] = exports["PUBSUB_EMULATOR_HOST"]
        docs.append(doc)
    docs.append(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {"name": WEBHOOK_SECRET, "namespace": NAMESPACE},
            "data": {
                "tls.crt": base64.b64encode(serving.cert_pem).decode(),
                "tls.key": base64.b64encode(serving.key_pem).decode(),
            },
        }
    )
    if eventstore:
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": EVENTSTORE, "namespace": NAMESPACE},
                "stringData": {"mongo-uri": exports["LIBERATOR_MONGO_URI"]},
            }
        )
    return docs


def apply(kubeconfig: str | Path, docs: Sequence[dict[str, Any]]) -> None:
    # Namespaces and CRDs first, so the objects that need them are accepted in the second pass.
    first = [d for d in docs if d["kind"] in ("Namespace", "CustomResourceDefinition")]
    rest = [d for d in docs if d not in first]
    kubectl(kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all(first))
    kubectl(
        kubeconfig,
        "wait",
        "--for=condition=Established",
        "--timeout=120s",
        *[f"crd/{d['metadata']['name']}" for d in first if d["kind"] == "CustomResourceDefinition"],
    )
    kubectl(kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all(rest))


def install(
    kubeconfig: str | Path,
    exports: dict[str, str],
    *,
    operator_replicas: int = 2,
    eventstore: bool = False,
    timeout: float = 300,
) -> None:
    """Apply Liberator and wait until its operator replicas are available."""
    existed = (
        subprocess.run(
            [
                "kubectl",
                f"--kubeconfig={kubeconfig}",
                "-n",
                NAMESPACE,
                "get",
                f"deployment/{OPERATOR}",
            ],
            capture_output=True,
            timeout=60,
            check=False,
        ).returncode
        == 0
    )
    apply(
        kubeconfig, manifests(exports, operator_replicas=operator_replicas, eventstore=eventstore)
    )
    if existed:
        # A new serving certificate and CA: running replicas read theirs only at start.
        kubectl(kubeconfig, "-n", NAMESPACE, "rollout", "restart", f"deployment/{OPERATOR}")
    started = time.monotonic()
    rollout_status(kubeconfig, OPERATOR, timeout)
    if eventstore:
        rollout_status(kubeconfig, EVENTSTORE, max(30.0, timeout - (time.monotonic() - started)))


def install_eventstore(
    kubeconfig: str | Path, exports: dict[str, str], *, timeout: float = 300
) -> None:
    """Apply only the event store and wait for it. It is Ready once its subscriptions exist, so
    apply it after the EntityPublisher that declares them."""
    docs = [
        d
        for d in manifests(exports, eventstore=True)
        if d["metadata"]["name"].startswith(EVENTSTORE)
    ]  # its ConfigMap has a hash suffix
    kubectl(kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    rollout_status(kubeconfig, EVENTSTORE, timeout)


def rollout_status(
    kubeconfig: str | Path, deployment: str, timeout: float, *, namespace: str = NAMESPACE
) -> None:
    """Wait until the rollout of ``deployment`` in ``namespace`` is complete."""
    kubectl(
        kubeconfig,
        "-n",
        namespace,
        "rollout",
        "status",
        f"deployment/{deployment}",
        f"--timeout={int(timeout)}s",
        timeout=timeout + 30,
    )


def local_node(stack: Stack) -> str:
    """Build what is missing, start the node with the project image in it, then MongoDB, the
    Pub/Sub emulator and Redis on the node IP; returns the admin kubeconfig's path."""
    stack.build(("cluster",))
    images.ensure_project(stack.say)
    kubeconfig = stack.start("cluster").exports["KUBECONFIG"]
    host_servers(stack)
    return kubeconfig


def host_servers(stack: Stack) -> None:
    """MongoDB, the Pub/Sub emulator and Redis, for the pods of a cluster (the local node's IP
    when it runs in ``stack``, else ``LIBERATOR_LISTEN_HOST``)."""
    for name in ("mongo", "pubsub", "redis"):
        stack.build((name,))
        stack.start(name)

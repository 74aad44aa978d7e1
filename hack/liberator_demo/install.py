"""Steps 1-4 of the demo: the node with its servers, Liberator, the quickstart, the app.

The node and the servers come from :func:`liberator_stack.deploy.local_node` and Liberator from
``deploy/overlays/local`` (:func:`liberator_stack.deploy.install`), as in the cluster tier. The
quickstart's Secrets are pointed at this stack's servers; the app is the quickstart's
``quotes-service`` Deployment running ``examples/quotes_app.py`` in the project image.
"""

from __future__ import annotations

import json

import yaml

from liberator_demo.session import NAMESPACE, QUICKSTART, ROOT, WAIT, Session
from liberator_stack import apps, deploy

APP_SOURCE = ROOT / "examples" / "quotes_app.py"
# The app pods' pace: slow and bounded (examples/quotes_app.py).
APP_INTERVAL_SECONDS = "3"
APP_MAX_QUOTES = "15"


def bring_up_node(demo: Session) -> None:
    demo.step(
        1,
        "bringing up the local node: etcd, kube-apiserver, controller manager, "
        "scheduler, kube-proxy, kubelet on containerd; MongoDB (mongo-java-server), "
        "the Pub/Sub emulator and Redis on the node IP",
    )
    with demo.progress("bringing up the node (a first run builds it: about 10 minutes)", every=30):
        demo.kubeconfig = deploy.local_node(demo.stack)
    demo.env = {**demo.stack.exports(), "KUBECONFIG": demo.kubeconfig}
    demo.stack.save()  # hack/stack status and env see this stack
    demo.show("get", "nodes")


def install_liberator(demo: Session) -> None:
    demo.step(
        2,
        "installing Liberator from deploy/overlays/local: 2 operator replicas "
        "(kopf peering), the webhook behind its Service",
    )
    print(
        "      certificate: a CA of our own signs the webhook Service's serving Secret and "
        "goes into the caBundle (no cert-manager on an offline node)",
        flush=True,
    )
    with demo.progress("waiting for the operator rollout"):
        deploy.install(demo.kubeconfig, demo.env, operator_replicas=2, timeout=WAIT)
    demo.show("-n", deploy.NAMESPACE, "get", "pods,services")


def apply_quickstart(demo: Session) -> None:
    demo.step(
        3,
        "applying examples/quickstart: namespace, Secrets (pointed at this "
        "stack's MongoDB and Redis), EntityPublisher 'quotes'; the event store",
    )
    demo.kubectl("apply", "-f", str(QUICKSTART / "00-namespace.yaml"))
    secrets = [d for d in yaml.safe_load_all((QUICKSTART / "10-secrets.yaml").read_text()) if d]
    values = {
        "quotes-mongo": {"uri": demo.env["LIBERATOR_MONGO_URI"]},
        "liberator-redis": {"url": demo.env["LIBERATOR_REDIS_URL"]},
    }
    for secret in secrets:
        secret["stringData"] = values[secret["metadata"]["name"]]
    demo.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(secrets))
    demo.kubectl("apply", "-f", str(QUICKSTART / "20-entitypublisher.yaml"))
    demo.wait(
        "EntityPublisher quotes Ready (topics and subscriptions provisioned)",
        lambda: any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in demo.publisher_status().get("conditions", [])
        ),
    )
    print(
        "      EntityPublisher quotes: Ready; now the event store, a Deployment reading "
        "the subscriptions it declares",
        flush=True,
    )
    with demo.progress("waiting for the event store rollout"):
        deploy.install_eventstore(demo.kubeconfig, demo.env, timeout=WAIT)
    demo.show("-n", deploy.NAMESPACE, "get", "deployments")


def run_app(demo: Session) -> str:
    demo.step(
        4,
        "the quotes-service Deployment: 2 pods of examples/quotes_app.py (pymongo, "
        "a quote every 3 s) in the project image; the webhook injects the sidecar",
    )
    deploy_app(demo)
    pods = demo.wait(
        "2 quotes-service pods with app and sidecar Ready",
        lambda: (
            p
            if len(p := demo.app_pods()) == 2
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
    demo.show("-n", NAMESPACE, "get", "pods", "-o", "wide")
    leader = demo.leader()
    print(f"      one sidecar leads: {leader} (EntityPublisher status.leader)", flush=True)
    demo.show("-n", NAMESPACE, "logs", leader, "-c", sidecar["name"], "--tail=8")
    return str(sidecar["name"])


def deploy_app(demo: Session) -> None:
    """The app's source as a ConfigMap and the quickstart's Deployment running it, rolled out."""
    template = yaml.safe_load((QUICKSTART / "30-quotes-service.yaml").read_text())
    labels = template["spec"]["selector"]["matchLabels"]
    demo.kubectl(
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
    demo.kubectl("apply", "-f", "-", stdin=json.dumps(deployment))
    with demo.progress("waiting for the quotes-service rollout"):
        demo.kubectl(
            "-n",
            NAMESPACE,
            "rollout",
            "status",
            "deployment/quotes-service",
            f"--timeout={int(WAIT)}s",
            timeout=WAIT + 30,
        )

"""The operator in the cluster: seed Jobs run as Jobs, two replicas fail over, and with no replica
at all pods are still admitted (the webhook's failurePolicy: Ignore)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator

import pytest

from liberator_stack import deploy
from tests.test_cluster.kit import WAIT, Node, Quotes, Reader, eventually, sidecars


@pytest.fixture()
def quotes(node: Node) -> Iterator[Quotes]:
    q = Quotes(node).create()
    yield q
    node.kubectl("delete", "namespace", q.ns, "--wait=false")


def operator_pods(node: Node) -> list[str]:
    pods = json.loads(
        node.kubectl(
            "-n",
            deploy.NAMESPACE,
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=liberator-operator",
            "-o",
            "json",
        )
    )
    return [
        p["metadata"]["name"] for p in pods["items"] if not p["metadata"].get("deletionTimestamp")
    ]


def test_a_seed_job_runs_to_complete_and_seeds_each_entity_once(quotes: Quotes) -> None:
    entities = {f"seeded-{i}" for i in range(30)}
    quotes.insert(*entities)
    quotes.seed("initial", mode="latest")
    seed = quotes.seed_end("initial")
    assert seed["status"]["phase"] == "Succeeded", seed["status"]
    [job] = quotes.get("jobs")["items"]
    conditions = {c["type"]: c["status"] for c in job["status"].get("conditions", [])}
    assert conditions.get("Complete") == "True", job["status"]  # the Job controller's word
    reader = Reader(quotes.node, quotes.project, quotes.seed_subscription)
    reader.wait_for(entities)
    counts = Counter(s for s in reader.subjects if s in entities)
    assert set(counts.values()) == {1}, counts


def test_a_seed_job_whose_pod_is_killed_mid_run_retries_and_seeds_each_entity_once(
    quotes: Quotes,
) -> None:
    entities = {f"many-{i:03d}" for i in range(200)}
    quotes.insert(*entities)
    quotes.seed("slow", mode="latest", rateLimit=10)
    reader = Reader(quotes.node, quotes.project, quotes.seed_subscription)

    def seeding_pod() -> str | None:
        reader.pull()
        if not 0 < len(entities & set(reader.subjects)) < 150:
            return None  # not started, or too far along to be "mid-run" (about 10 a second)
        running = [
            p["metadata"]["name"]
            for p in quotes.get("pods", "-l", "job-name")["items"]
            if p.get("status", {}).get("phase") == "Running"
        ]
        return running[0] if running else None

    victim = eventually(seeding_pod, what="the seed Job's pod, mid-run")
    quotes.node.kubectl("-n", quotes.ns, "delete", "pod", victim, "--grace-period=0", "--force")
    seed = quotes.seed_end("slow")
    assert seed["status"]["phase"] == "Succeeded", seed["status"]
    # A forced deletion lets the killed container run on for a moment beside the Job's new pod,
    # so a batch can be counted twice; what consumers get stays once per entity (below).
    assert seed["status"]["seeded"] >= 200, seed["status"]
    [job] = quotes.get("jobs")["items"]
    assert {c["type"]: c["status"] for c in job["status"]["conditions"]}.get("Complete") == "True"
    pods = {p["metadata"]["name"] for p in quotes.get("pods", "-l", "job-name")["items"]}
    assert pods and victim not in pods, pods  # another pod of the Job finished the seed
    reader.wait_for(entities)
    # A retried batch may be delivered again, always under the same ce-id: once per entity.
    assert {subject: len(reader.ids[subject]) for subject in entities} == {
        subject: 1 for subject in entities
    }


def test_when_the_active_operator_dies_the_other_replica_takes_over(node: Node) -> None:
    def active() -> str | None:
        peering = json.loads(node.kubectl("get", "clusterkopfpeering", "liberator", "-o", "json"))
        peers = {
            key: value
            for key, value in (peering.get("status") or {}).items()
            if isinstance(value, dict) and "priority" in value
        }
        alive = [
            (v["priority"], k)
            for k, v in peers.items()
            if any(pod in k for pod in operator_pods(node))
        ]
        return max(alive)[1] if alive else None

    leader = eventually(active, what="an active operator in the peering")
    [pod] = [p for p in operator_pods(node) if p in leader]
    node.kubectl("-n", deploy.NAMESPACE, "delete", "pod", pod, "--grace-period=0", "--force")
    # A publisher created now is provisioned only if another replica acts.
    q = Quotes(node).create()
    node.kubectl("delete", "namespace", q.ns, "--wait=false")
    deploy.rollout_status(node.kubeconfig, deploy.OPERATOR, WAIT)


def test_with_the_operator_scaled_to_zero_pods_are_still_admitted(
    node: Node, quotes: Quotes
) -> None:
    node.kubectl("-n", deploy.NAMESPACE, "scale", f"deployment/{deploy.OPERATOR}", "--replicas=0")
    try:
        eventually(lambda: not operator_pods(node), what="no operator pod")
        quotes.apply(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "while-down",
                    "namespace": quotes.ns,
                    "labels": {"app": "quotes-service"},
                },
                "spec": quotes.deployment()["spec"]["template"]["spec"],
            }
        )
        pod = quotes.get("pod", "while-down")
        assert sidecars(pod) == []  # admitted without the sidecar, as failurePolicy says
    finally:
        node.kubectl(
            "-n", deploy.NAMESPACE, "scale", f"deployment/{deploy.OPERATOR}", "--replicas=2"
        )
        deploy.rollout_status(node.kubeconfig, deploy.OPERATOR, WAIT)

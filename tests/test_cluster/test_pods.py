"""Injected pods on a real cluster: they run, they stay Ready, one sidecar leads, nothing is lost.

Waits are generous and nothing asserts a duration (a noisy 2-core machine); the failover time is
printed as a figure instead.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from liberator_stack import nodeconf as nc
from tests.test_cluster.kit import (
    Node,
    Quotes,
    Reader,
    eventually,
    pod_ready,
    ready,
    sidecars,
)


@pytest.fixture(scope="module")
def quotes(node: Node) -> Iterator[Quotes]:
    q = Quotes(node, replicas=2).create()
    yield q
    node.kubectl("delete", "namespace", q.ns, "--wait=false")


@pytest.fixture(scope="module")
def reader(node: Node, quotes: Quotes) -> Reader:
    return Reader(node, quotes.project, quotes.subscription)


def test_injected_pods_run_with_app_and_sidecar_ready_and_writes_arrive(
    quotes: Quotes, reader: Reader
) -> None:
    pods = quotes.pods()
    assert len(pods) == 2
    for pod in pods:
        [sidecar] = sidecars(pod)
        # A native sidecar where the server supports it (v1.34 does).
        assert sidecar in pod["spec"].get("initContainers", [])
        assert sidecar.get("restartPolicy") == "Always"
        assert ready(pod, "app") and ready(pod, sidecar["name"]), pod["status"]
    # The app's own writes (one per pod, with pymongo) and the test's.
    written = {f"host-{i}" for i in range(5)}
    quotes.insert(*written)
    reader.wait_for(written | {p["metadata"]["name"] for p in pods})


def test_two_replicas_give_exactly_one_leader_in_the_status(quotes: Quotes) -> None:
    names = {p["metadata"]["name"] for p in quotes.pods()}
    leader = eventually(lambda: quotes.status().get("leader"), what="a leader in the status")
    assert leader in names
    assert quotes.condition("Publishing") == "True"


def test_deleting_the_leaders_pod_moves_the_lead_and_loses_no_event(
    quotes: Quotes, reader: Reader, capsys: pytest.CaptureFixture[str]
) -> None:
    leader = eventually(lambda: quotes.status().get("leader"), what="a leader")
    written = [f"during-{i}" for i in range(20)]
    quotes.insert(*written[:10])
    started = time.monotonic()
    quotes.node.kubectl("-n", quotes.ns, "delete", "pod", leader, "--wait=false")
    quotes.insert(*written[10:])
    # The surviving pod or the Deployment's replacement: both are standbys by the time the old
    # lease ends, and either may win it.
    new = eventually(
        lambda: quotes.status().get("leader") not in (None, leader) and quotes.status()["leader"],
        what="the lead on another pod",
    )
    moved = time.monotonic() - started
    reader.wait_for(set(written))
    with capsys.disabled():
        print(
            f"\n[figure] lead moved from {leader} to {new} {moved:.1f}s after the delete "
            "(as the EntityPublisher status shows it)"
        )
    quotes.rollout()


def test_rollout_restart_gives_one_sidecar_per_new_pod(quotes: Quotes, reader: Reader) -> None:
    before = {p["metadata"]["name"] for p in quotes.pods()}
    quotes.node.kubectl("-n", quotes.ns, "rollout", "restart", "deployment/quotes")
    quotes.rollout()
    pods = eventually(
        lambda: (
            [p for p in quotes.pods() if p["metadata"]["name"] not in before and pod_ready(p)]
            if len(quotes.pods()) == 2
            else None
        ),
        what="two new Ready pods",
    )
    assert len(pods) == 2
    for pod in pods:
        assert len(sidecars(pod)) == 1, pod["spec"]
    reader.wait_for({p["metadata"]["name"] for p in pods})


def test_with_mongodb_stopped_the_app_pods_stay_ready(node: Node, quotes: Quotes) -> None:
    port = int(node.stack.servers["mongo"].details["port"])
    node.stack.stop("mongo")
    try:
        # The sidecars lose MongoDB; their pods must keep serving, checked for half a minute.
        for _ in range(15):
            pods = quotes.pods()
            assert pods and all(pod_ready(p) for p in pods), [p["status"] for p in pods]
            time.sleep(2)
    finally:
        node.stack.start("mongo", port)
    written = {"after-outage"}
    quotes.insert(*written)
    Reader(node, quotes.project, quotes.subscription).wait_for(written)


def test_a_restricted_namespace_admits_the_injected_pod(node: Node) -> None:
    q = Quotes(node, restricted=True).create()
    try:
        [pod] = q.pods()
        assert len(sidecars(pod)) == 1
        assert pod_ready(pod)
    finally:
        node.kubectl("delete", "namespace", q.ns, "--wait=false")


PROBE = """
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        print(target, "open")
    except OSError as error:
        print(target, "blocked", type(error).__name__)
"""


def test_pods_reach_the_node_and_nothing_beyond(node: Node, quotes: Quotes) -> None:
    mongo = quotes.mongo_uri.split("//", 1)[1].split("/", 1)[0]
    # Addresses of this machine off the node, and beyond it: its uplink and default gateway.
    routes = subprocess.run(
        ["ip", "-4", "route", "show", "default"], capture_output=True, text=True, check=False
    ).stdout.split()
    outside = [f"{routes[routes.index('via') + 1]}:80"] if "via" in routes else []
    outside += ["203.0.113.7:443"]  # TEST-NET-3: routed out by default, if at all
    uplinks = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "scope", "global"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    outside += [
        f"{line.split()[3].split('/')[0]}:22"
        for line in uplinks.splitlines()
        if line.split()[1] not in (nc.NODE_LINK, nc.CNI_BRIDGE)
    ]
    pod = quotes.pods()[0]["metadata"]["name"]
    out = node.kubectl(
        "-n", quotes.ns, "exec", pod, "-c", "app", "--", "python3", "-c", PROBE, mongo, *outside
    )
    seen = dict(line.split(" ", 1) for line in out.splitlines())
    assert seen[mongo] == "open", out
    for target in outside:
        assert seen[target].startswith("blocked"), out

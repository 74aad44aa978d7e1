"""The cluster tier: Liberator's pods on a real cluster.

By default the local node (``hack/stack up cluster``, root needed) with MongoDB, the Pub/Sub
emulator and Redis as host processes on the node IP, and Liberator applied from
``deploy/overlays/local``. ``LIBERATOR_TEST_KUBECONFIG`` points the tier at another cluster
(kind, k3d) instead: its node must hold the image (``kind load docker-image``) and its pods must
reach this machine at ``LIBERATOR_LISTEN_HOST``, where the servers then listen (docs/cluster.md).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from liberator_stack import Stack, deploy, host
from tests.test_cluster.kit import Node


@pytest.fixture(scope="package")
def node() -> Iterator[Node]:
    external = os.environ.get("LIBERATOR_TEST_KUBECONFIG", "").strip()
    run_dir = Path(tempfile.mkdtemp(prefix="liberator-cluster-tier-"))
    stack = Stack(run_dir)
    try:
        if external:
            if not Path(external).is_file():
                pytest.fail(
                    f"LIBERATOR_TEST_KUBECONFIG={external!r} is not a file: give the "
                    "path of a kubeconfig for the cluster to test on"
                )
            kubeconfig = external
            deploy.host_servers(stack)
        else:
            problem = host.missing_privileges()
            if problem:
                pytest.skip(f"the local node: {problem}")
            if host.leftovers():
                pytest.skip(
                    "a local node runs already (hack/stack down first, or point "
                    "LIBERATOR_TEST_KUBECONFIG at it)"
                )
            kubeconfig = deploy.local_node(stack)
        deploy.install(kubeconfig, stack.exports())
        yield Node(stack, kubeconfig)
    finally:
        stack.down()

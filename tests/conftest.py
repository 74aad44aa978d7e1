"""Fixtures that hand tests the real local servers from hack/liberator_stack.

Servers start lazily, once per session, on free loopback ports, and stop at the end. A test that
asks for ``mongo`` gets mongo-java-server, or the server named by ``LIBERATOR_TEST_MONGO_URI``.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from liberator_stack import Server, Stack
from tests.support.stack import running

SERVER_FIXTURES = frozenset(
    {"stack", "mongo_server", "mongo_uri", "pubsub", "redis_url", "kube", "node"}
)
"""A test that asks for one of these talks to a real local server."""
SERVER_FOLDERS = frozenset({"test_stack", "test_cluster"})
"""Folders whose tests start their own servers, node or built tools."""
SERVER_MODULES = frozenset({"test_demo.py", "test_monitoring.py"})
"""The demo runs the node; the monitoring tests run promtool, which hack/stack builds."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs a server, so ``pytest -m "not servers"`` runs the pure half."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        parts = set(item.path.parts)
        if (
            fixtures & SERVER_FIXTURES
            or parts & SERVER_FOLDERS
            or item.path.name in SERVER_MODULES
            or item.get_closest_marker("kube")
        ):
            item.add_marker(pytest.mark.servers)


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    run_dir = Path(tempfile.mkdtemp(prefix="liberator-test-stack-"))
    with Stack(run_dir) as s:
        yield s


@pytest.fixture(scope="session")
def real_mongo_uri() -> str | None:
    return os.environ.get("LIBERATOR_TEST_MONGO_URI") or None


@pytest.fixture()
def mongo_server(stack: Stack, real_mongo_uri: str | None) -> Server:
    """The mongo-java-server process (skips when a real MongoDB is configured instead)."""
    if real_mongo_uri:
        pytest.skip("LIBERATOR_TEST_MONGO_URI is set: this test drives the local emulator process")
    return running(stack, "mongo")


@pytest.fixture()
def mongo_uri(stack: Stack, real_mongo_uri: str | None) -> str:
    if real_mongo_uri:
        return real_mongo_uri
    return running(stack, "mongo").exports["LIBERATOR_MONGO_URI"]


@pytest.fixture()
def pubsub(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Server:
    """The Pub/Sub emulator; ``PUBSUB_EMULATOR_HOST`` is set for the test's clients."""
    server = running(stack, "pubsub")
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", server.exports["PUBSUB_EMULATOR_HOST"])
    return server


@pytest.fixture()
def redis_url(stack: Stack) -> str:
    return running(stack, "redis").exports["LIBERATOR_REDIS_URL"]


@pytest.fixture()
def kube(stack: Stack) -> Server:
    """kube-apiserver with etcd; ``exports['KUBECONFIG']`` is an admin kubeconfig."""
    return running(stack, "kube")


@pytest.fixture()
def unique() -> str:
    """A short unique suffix for names (databases, topics) so tests never share state."""
    return uuid.uuid4().hex[:10]

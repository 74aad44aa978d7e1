"""Fixtures that hand tests the real local servers from hack/localstack.

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

from localstack import Server, Stack


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    run_dir = Path(tempfile.mkdtemp(prefix="liberator-test-stack-"))
    with Stack(run_dir) as s:
        yield s


def _server(stack: Stack, name: str) -> Server:
    server = stack.servers.get(name)
    if server is None or not server.alive():
        if server is not None:
            stack.stop(name)
        stack.build((name,))
        server = stack.start(name)
    return server


@pytest.fixture(scope="session")
def real_mongo_uri() -> str | None:
    return os.environ.get("LIBERATOR_TEST_MONGO_URI") or None


@pytest.fixture()
def mongo_server(stack: Stack, real_mongo_uri: str | None) -> Server:
    """The mongo-java-server process (skips when a real MongoDB is configured instead)."""
    if real_mongo_uri:
        pytest.skip("LIBERATOR_TEST_MONGO_URI is set: this test drives the local emulator process")
    return _server(stack, "mongo")


@pytest.fixture()
def mongo_uri(stack: Stack, real_mongo_uri: str | None) -> str:
    if real_mongo_uri:
        return real_mongo_uri
    return _server(stack, "mongo").exports["LIBERATOR_MONGO_URI"]


@pytest.fixture()
def pubsub(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Server:
    """The Pub/Sub emulator; ``PUBSUB_EMULATOR_HOST`` is set for the test's clients."""
    server = _server(stack, "pubsub")
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", server.exports["PUBSUB_EMULATOR_HOST"])
    return server


@pytest.fixture()
def redis_url(stack: Stack) -> str:
    return _server(stack, "redis").exports["LIBERATOR_REDIS_URL"]


@pytest.fixture()
def kube(stack: Stack) -> Server:
    """kube-apiserver with etcd; ``exports['KUBECONFIG']`` is an admin kubeconfig."""
    return _server(stack, "kube")


@pytest.fixture()
def unique() -> str:
    """A short unique suffix for names (databases, topics) so tests never share state."""
    return uuid.uuid4().hex[:10]

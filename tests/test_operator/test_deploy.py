"""deploy/ renders with kustomize and says what the code and the docs say."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from liberator_operator.webhook import FAILURE_POLICY, build_webhook_configuration
from liberator_stack.deploy import render

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return render(ROOT / "deploy")


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def test_base_has_every_part(rendered: list[dict[str, Any]]) -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in rendered}
    assert {
        ("Namespace", "liberator-system"),
        ("CustomResourceDefinition", "entitypublishers.liberator.io"),
        ("CustomResourceDefinition", "eventseeds.liberator.io"),
        ("CustomResourceDefinition", "clusterkopfpeerings.kopf.dev"),
        ("ClusterKopfPeering", "liberator"),
        ("ServiceAccount", "liberator-operator"),
        ("ClusterRole", "liberator-operator"),
        ("ClusterRoleBinding", "liberator-operator"),
        ("Deployment", "liberator-operator"),
        ("Service", "liberator-webhook"),
        ("Certificate", "liberator-webhook"),
        ("MutatingWebhookConfiguration", "liberator-injector"),
    } <= kinds


def test_webhook_configuration_matches_the_builder(rendered: list[dict[str, Any]]) -> None:
    deployed = find(rendered, "MutatingWebhookConfiguration", "liberator-injector")
    built = build_webhook_configuration(
        {"service": {"name": "liberator-webhook", "namespace": "liberator-system"}},
        excluded_namespaces=["kube-system", "liberator-system"],
    )
    assert deployed["webhooks"] == built["webhooks"]
    [hook] = deployed["webhooks"]
    assert hook["failurePolicy"] == FAILURE_POLICY
    assert 2 <= hook["timeoutSeconds"] <= 5
    assert deployed["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        "liberator-system/liberator-webhook"
    )


def test_operator_deployment_is_ha_and_restricted(rendered: list[dict[str, Any]]) -> None:
    deployment = find(rendered, "Deployment", "liberator-operator")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert "--standalone" not in container["args"], "replicas rely on peering"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "readinessProbe" in container


def test_rbac_is_least_privilege(rendered: list[dict[str, Any]]) -> None:
    role = find(rendered, "ClusterRole", "liberator-operator")
    verbs = {
        (group, resource): set(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert "*" not in {v for vs in verbs.values() for v in vs}
    assert verbs[("", "secrets")] == {"get"}, "secrets are read one by one, never listed"
    assert verbs[("", "pods")] == {"list"}, "pods are only counted"
    assert "delete" not in verbs[("batch", "jobs")]

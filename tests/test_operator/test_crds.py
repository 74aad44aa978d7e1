"""Sanity of crds/*.yaml without a server: structure, descriptions, printer columns, defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from liberator_publisher.core import contract

CRDS = Path(__file__).resolve().parents[2] / "crds"


def load(name: str) -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load((CRDS / name).read_text())
    return crd


def walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, schema)]
    for key, sub in (schema.get("properties") or {}).items():
        found += walk(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        found += walk(schema["items"], f"{path}[]")
    return found


@pytest.mark.parametrize(
    ("file", "kind", "plural"),
    [
        ("entitypublisher.yaml", "EntityPublisher", "entitypublishers"),
        ("eventseed.yaml", "EventSeed", "eventseeds"),
    ],
)
def test_names_and_version(file: str, kind: str, plural: str) -> None:
    crd = load(file)
    assert crd["metadata"]["name"] == f"{plural}.liberator.io"
    assert crd["spec"]["group"] == "liberator.io"
    assert crd["spec"]["names"]["kind"] == kind
    [version] = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1"
    assert version["subresources"] == {"status": {}}


def test_short_name_is_not_endpoints() -> None:
    # ep is core Endpoints' short name; the real API server test runs kubectl get entpub.
    assert load("entitypublisher.yaml")["spec"]["names"]["shortNames"] == ["entpub"]


@pytest.mark.parametrize(
    ("file", "columns"),
    [
        (
            "entitypublisher.yaml",
            ["Entity", "Collection", "Topic", "Pods", "Ready", "Status", "Lag", "Age"],
        ),
        ("eventseed.yaml", ["Publisher", "Mode", "Phase", "Seeded", "Age"]),
    ],
)
def test_printer_columns(file: str, columns: list[str]) -> None:
    version = load(file)["spec"]["versions"][0]
    shown = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert shown == columns


@pytest.mark.parametrize("file", ["entitypublisher.yaml", "eventseed.yaml"])
def test_every_spec_field_is_described(file: str) -> None:
    schema = load(file)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    undocumented = [
        path
        for path, sub in walk(schema["properties"]["spec"], "spec")
        if not sub.get("description")
        and not path.endswith("[]")  # list items are described by the list
        and "matchExpressions[]" not in path
    ]
    assert undocumented == []


def test_defaults_match_the_design() -> None:
    spec = load("entitypublisher.yaml")["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"
    ]["spec"]["properties"]
    assert spec["pubsub"]["properties"]["topic"]["default"] == "integration-events"
    assert spec["deletionPolicy"]["default"] == "Retain"
    assert spec["deletionPolicy"]["enum"] == ["Retain", "Delete"]
    assert spec["entity"]["properties"]["eventContextField"]["default"] == "_event"
    assert spec["paused"]["default"] is False
    seed = load("eventseed.yaml")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
        "spec"
    ]
    assert seed["required"] == ["publisher"]
    assert seed["properties"]["mode"]["enum"] == ["latest", "history"]
    assert seed["properties"]["mode"]["default"] == "latest"


def test_crd_defaults_are_the_contracts() -> None:
    # One home for each default (core/contract.py): the CRD's copy must not drift from it.
    spec = load("entitypublisher.yaml")["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"
    ]["spec"]["properties"]
    assert spec["stallAfterSeconds"]["default"] == contract.STALL_AFTER_SECONDS
    assert spec["resumePointMarginPercent"]["default"] == contract.RESUME_MARGIN_PERCENT
    lease = spec["sidecar"]["properties"]["leaseTtlSeconds"]["default"]
    assert lease == contract.LEASE_TTL_SECONDS

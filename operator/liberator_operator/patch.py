"""The JSON patch that injects sidecars into a Pod at admission.

Pure: given the pod and the EntityPublishers of its namespace, :func:`build_patch` decides what
to add. Decisions:

- A pod matched by several publishers gets one sidecar for each, named ``liberator-<publisher>``
  on distinct ports (8099 upwards, skipping ports the pod already declares), in name order.
- A sidecar whose container name is already in the pod is not added again, so a reinvoked
  webhook or a re-created pod spec adds nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from liberator_operator.model import Publisher
from liberator_operator.selector import matches
from liberator_operator.settings import OperatorSettings
from liberator_operator.sidecar import build_sidecar, container_name
from liberator_publisher.core.contract import DEFAULT_HTTP_PORT

__all__ = [
    "INJECTED_ANNOTATION",
    "INJECTED_LABEL",
    "INJECT_ANNOTATION",
    "Injection",
    "build_patch",
    "injected_publishers",
    "skip_reason",
]

INJECT_ANNOTATION = "liberator.io/inject"
INJECTED_ANNOTATION = "liberator.io/injected"
INJECTED_LABEL = "liberator.io/injected"
ALWAYS_EXCLUDED = frozenset({"kube-system"})


@dataclass(frozen=True)
class Injection:
    """What the webhook does to one pod."""

    ops: list[dict[str, Any]]
    """JSON patch (RFC 6902) operations; empty when nothing is injected."""
    publishers: tuple[str, ...] = ()
    """Names of the publishers whose sidecars this patch adds."""
    reason: str = ""
    """Why nothing (more) is injected, for logs and warnings."""
    containers: list[dict[str, Any]] = field(default_factory=list)
    """The added containers, as in the patch."""


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def injected_publishers(annotations: Mapping[str, str] | None) -> list[str]:
    """Publisher names listed in the pod's ``liberator.io/injected`` annotation."""
    raw = (annotations or {}).get(INJECTED_ANNOTATION, "")
    return [name for name in raw.split(",") if name]


def _declared_ports(containers: Iterable[Mapping[str, Any]]) -> set[int]:
    return {
        int(p["containerPort"])
        for c in containers
        for p in c.get("ports") or []
        if "containerPort" in p
    }


def skip_reason(pod: Mapping[str, Any], namespace: str, settings: OperatorSettings) -> str:
    """Why ``pod`` gets no sidecar whatever publishers exist; empty when it may get one."""
    if namespace in ALWAYS_EXCLUDED or namespace == settings.namespace:
        return f"namespace {namespace} is excluded from injection"
    annotations: Mapping[str, str] = (pod.get("metadata") or {}).get("annotations") or {}
    if annotations.get(INJECT_ANNOTATION, "").lower() == "false":
        return f'opted out by annotation {INJECT_ANNOTATION}: "false"'
    return ""


def build_patch(
    pod: Mapping[str, Any],
    namespace: str,
    publishers: Iterable[Publisher],
    settings: OperatorSettings,
    *,
    native: bool,
) -> Injection:
    """The patch that adds a sidecar for each publisher matching ``pod`` in ``namespace``."""
    skip = skip_reason(pod, namespace, settings)
    if skip:
        return Injection([], reason=skip)
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    containers: list[Mapping[str, Any]] = list(spec.get("containers") or [])
    init_containers: list[Mapping[str, Any]] = list(spec.get("initContainers") or [])
    already = injected_publishers(meta.get("annotations") or {})
    matching = _matching(publishers, namespace, meta.get("labels") or {})
    present = {c.get("name") for c in containers + init_containers}
    todo = [
        p for p in matching if p["name"] not in already and container_name(p["name"]) not in present
    ]
    if not todo:
        reason = "already injected" if matching else "no EntityPublisher matches the pod's labels"
        return Injection([], reason=reason)

    added = _sidecars(todo, _declared_ports(containers + init_containers), settings, native)
    ops: list[dict[str, Any]] = []
    target = "initContainers" if native else "containers"
    if target == "initContainers" and not init_containers:
        ops.append({"op": "add", "path": "/spec/initContainers", "value": added})
    else:
        # Appended: app init containers run first; a native sidecar still starts before the
        # app containers and stops after them.
        ops.extend({"op": "add", "path": f"/spec/{target}/-", "value": c} for c in added)
    names = tuple(p["name"] for p in todo)
    ops.append(
        _add_metadata(meta, "annotations", INJECTED_ANNOTATION, ",".join([*already, *names]))
    )
    # A label too, because only labels can be selected when counting injected pods.
    ops.append(_add_metadata(meta, "labels", INJECTED_LABEL, "true"))
    return Injection(ops, publishers=names, containers=added)


def _matching(
    publishers: Iterable[Publisher], namespace: str, labels: Mapping[str, str]
) -> list[Publisher]:
    """The unpaused publishers of ``namespace`` whose selector matches ``labels``, by name."""
    return sorted(
        (
            p
            for p in publishers
            if p["namespace"] == namespace
            and not p["spec"].get("paused", False)
            and matches(p["spec"]["selector"], labels)
        ),
        key=lambda p: p["name"],
    )


def _sidecars(
    publishers: Iterable[Publisher], used: set[int], settings: OperatorSettings, native: bool
) -> list[dict[str, Any]]:
    """A sidecar for each publisher, each on the next port from 8099 that nothing uses."""
    port = DEFAULT_HTTP_PORT
    added: list[dict[str, Any]] = []
    for publisher in publishers:
        while port in used:
            port += 1
        added.append(build_sidecar(publisher, settings, port=port, native=native))
        used.add(port)
    return added


def _add_metadata(meta: Mapping[str, Any], mapping: str, key: str, value: str) -> dict[str, Any]:
    """The op that sets ``metadata.<mapping>[key]``, adding the map where the pod has none."""
    if meta.get(mapping) is None:
        return {"op": "add", "path": f"/metadata/{mapping}", "value": {key: value}}
    return {"op": "add", "path": f"/metadata/{mapping}/{_escape(key)}", "value": value}

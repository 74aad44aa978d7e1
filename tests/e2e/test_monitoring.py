"""deploy/components/monitoring: the alerts pass promtool's checks and unit tests, the component
renders on the base, the scrape configs find what the operator injects, and every metric the
rules and the dashboard name is one the code exports.

promtool is the real one, built at a pinned release by ``hack/stack build``
(hack/liberator_stack/promtool.py). Without it these tests build it as root and skip otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from liberator_operator.patch import INJECTED_LABEL, build_patch
from liberator_operator.settings import OperatorSettings
from liberator_publisher.sidecar.metrics import Metrics
from liberator_publisher.store.eventstore import EventStore, EventStoreSettings
from liberator_stack import promtool
from liberator_stack.deploy import render
from liberator_stack.process import say_stderr
from tests.support import kustomize
from tests.test_operator.builders import pod, publisher

ROOT = Path(__file__).resolve().parents[2]
COMPONENT = ROOT / "deploy" / "components" / "monitoring"
RULES = COMPONENT / "prometheusrule.yaml"
RULE_TESTS = COMPONENT / "tests" / "rules_test.yaml"
DASHBOARD = COMPONENT / "grafana-dashboard.json"
OPERATIONS = ROOT / "docs" / "operations.md"
RUNBOOK_PREFIX = "https://github.com/liberator-io/liberator/blob/main/docs/operations.md#"
SEVERITIES = {"critical", "warning", "info"}
EXTERNAL_METRICS = {
    # kube-apiserver's (alpha) counter of webhook calls that failed open: not Liberator's.
    "apiserver_admission_webhook_fail_open_count",
}
METRIC = re.compile(r"\b(?:liberator|apiserver)_[a-z0-9_]+\b")


# -- the files ------------------------------------------------------------------------------------


def rule_groups() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    groups: list[dict[str, Any]] = doc["spec"]["groups"]
    return groups


def alerts() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_queries() -> list[str]:
    panels = dashboard()["panels"]
    queries = [t["expr"] for p in panels for t in p.get("targets", [])]
    queries += [
        v["query"]["query"] for v in dashboard()["templating"]["list"] if v["type"] == "query"
    ]
    return queries


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings: lowercased, punctuation dropped, spaces to '-'."""
    anchors = set()
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced  # a `# comment` in a code block is no heading
        match = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if match and not fenced:
            anchors.add(re.sub(r"[^\w\- ]", "", match[1].lower()).replace(" ", "-"))
    return anchors


# -- promtool -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool_exe() -> Path:
    path = promtool.binary_path()
    if not path.exists():
        if os.geteuid() != 0:
            pytest.skip(
                f"promtool {promtool.VERSION} is not built at {path} and this is not "
                "root: run `hack/stack build` (a Go build of several minutes) to run "
                "these tests"
            )
        promtool.build(say_stderr)
    return path


@pytest.fixture()
def rules_dir(tmp_path: Path) -> Path:
    """The PrometheusRule's groups as a plain rule file (what promtool reads), next to the unit
    tests that name it."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups()}))
    shutil.copy(RULE_TESTS, tmp_path / "rules_test.yaml")
    return tmp_path


def run_promtool(exe: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_promtool_checks_the_rules(promtool_exe: Path, rules_dir: Path) -> None:
    result = run_promtool(promtool_exe, rules_dir, "check", "rules", "rules.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout + result.stderr


def test_promtool_refuses_a_broken_rule(promtool_exe: Path, tmp_path: Path) -> None:
    """The control: the check above would catch a bad expression."""
    groups = rule_groups()
    groups[0]["rules"][0]["expr"] = "max by (namespace (liberator_parked) == 1"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    result = run_promtool(promtool_exe, tmp_path, "check", "rules", "rules.yaml")
    assert result.returncode != 0
    assert "parse error" in result.stdout + result.stderr


def test_promtool_unit_tests_of_the_rules_pass(promtool_exe: Path, rules_dir: Path) -> None:
    result = run_promtool(promtool_exe, rules_dir, "test", "rules", "rules_test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_unit_tests_fail_when_an_alert_changes(
    promtool_exe: Path, rules_dir: Path
) -> None:
    """The control: a threshold moved past the firing case's input fails the unit tests."""
    groups = rule_groups()
    for rule in groups[0]["rules"]:
        if rule.get("alert") == "LiberatorRelayLagHigh":
            rule["expr"] = rule["expr"].replace("> 60", "> 600")
    (rules_dir / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    result = run_promtool(promtool_exe, rules_dir, "test", "rules", "rules_test.yaml")
    assert result.returncode != 0
    assert "LiberatorRelayLagHigh" in result.stdout + result.stderr


@pytest.mark.parametrize("alert", [rule["alert"] for rule in alerts()])
def test_each_firing_case_needs_its_alert(promtool_exe: Path, rules_dir: Path, alert: str) -> None:
    """An alert that can never fire fails its own firing case: the case asserts the alert."""
    groups = rule_groups()
    for rule in groups[0]["rules"]:
        if rule.get("alert") == alert:
            rule["expr"] = "vector(0) > 1"
    (rules_dir / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    result = run_promtool(
        promtool_exe, rules_dir, "test", "rules", "--run", f"^{alert} fires:", "rules_test.yaml"
    )
    assert result.returncode != 0, result.stdout
    assert f"alertname: {alert}" in result.stdout + result.stderr


# -- the rules and their unit tests ---------------------------------------------------------------


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == ["rules.yaml"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for group in tests["tests"]:
        assert group["input_series"], group["name"]
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - firing == set(), "alerts without a case that fires them"
    assert names - quiet == set(), "alerts without a case where they stay quiet"
    assert (firing | quiet) - names == set(), "unit tests of alerts that do not exist"


def test_every_alert_has_a_severity_a_summary_and_a_runbook_that_exists() -> None:
    anchors = github_anchors(OPERATIONS.read_text())
    found = alerts()
    assert len(found) >= 13
    for rule in found:
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        url = annotations["runbook_url"]
        assert url.startswith(RUNBOOK_PREFIX), (name, url)
        anchor = url.removeprefix(RUNBOOK_PREFIX)
        assert anchor in anchors, f"{name}: no heading in docs/operations.md has #{anchor}"


def test_the_anchor_rule_matches_githubs() -> None:
    assert github_anchors(
        "### Poison events (outbox documents with `status: failed`)\n"
        "### Pub/Sub outage\n## not # a heading\n"
        "```yaml\n# a comment\n```\n"
    ) == {"poison-events-outbox-documents-with-status-failed", "pubsub-outage", "not--a-heading"}


# -- metric names ---------------------------------------------------------------------------------


def exposed_names(text: str) -> set[str]:
    """Every name a query can use for the families in ``text``: the samples' names (``_total``,
    ``_bucket``...) and, for families without a sample yet, what their type exposes."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {sample.name for sample in family.samples}
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    return names


@pytest.fixture(scope="module")
def known_metrics() -> Iterator[set[str]]:
    sidecar = exposed_names(Metrics().render().decode())
    # The event store's metrics live on its instance. Constructing one connects to nothing:
    # MongoClient connects lazily and the emulator host spares Pub/Sub credentials.
    saved = os.environ.get("PUBSUB_EMULATOR_HOST")
    os.environ["PUBSUB_EMULATOR_HOST"] = "127.0.0.1:9"
    try:
        store = EventStore(
            EventStoreSettings(
                mongo_uri="mongodb://127.0.0.1:9/", database="metrics", subscriptions=()
            ),
            registry=CollectorRegistry(),
        )
    finally:
        if saved is None:
            del os.environ["PUBSUB_EMULATOR_HOST"]
        else:
            os.environ["PUBSUB_EMULATOR_HOST"] = saved
    try:
        eventstore = exposed_names(generate_latest(store.registry).decode())
    finally:
        store.close()
    assert "liberator_leader" in sidecar
    assert "liberator_eventstore_messages_total" in eventstore
    yield sidecar | eventstore | EXTERNAL_METRICS


def test_rules_name_only_exported_metrics(known_metrics: set[str]) -> None:
    for rule in alerts():
        used = set(METRIC.findall(rule["expr"]))
        assert used, f"{rule['alert']}: no metric found in {rule['expr']!r}"
        assert used - known_metrics == set(), f"{rule['alert']}: unknown metrics"


def test_dashboard_names_only_exported_metrics(known_metrics: set[str]) -> None:
    for query in dashboard_queries():
        used = set(METRIC.findall(query))
        assert used, f"no metric found in {query!r}"
        assert used - known_metrics == set(), f"unknown metrics in {query!r}"


def test_dashboard_shows_flow_health_and_resume_headroom() -> None:
    used = {name for query in dashboard_queries() for name in METRIC.findall(query)}
    assert {
        "liberator_capture_lag_seconds",
        "liberator_relay_lag_seconds",
        "liberator_outbox_backlog",
        "liberator_events_captured_total",
        "liberator_events_published_total",
        "liberator_events_failed_total",
        "liberator_leader",
        "liberator_parked",
        "liberator_stalled",
        "liberator_resume_headroom_seconds",
        "liberator_oplog_window_seconds",
    } <= used
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids)), "Grafana needs unique panel ids"


# -- the component on the base --------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The base plus the component, as an overlay of the user's would have it."""
    folder = tmp_path_factory.mktemp("overlay")
    return render(kustomize.overlay(folder, [ROOT / "deploy" / "base"], [COMPONENT]))


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def test_component_adds_rules_monitors_and_dashboard_to_the_base(
    rendered: list[dict[str, Any]],
) -> None:
    find(rendered, "Deployment", "liberator-operator")  # the base is still all there
    rule = find(rendered, "PrometheusRule", "liberator")
    assert rule["spec"]["groups"] == rule_groups()
    for kind, name in [
        ("PrometheusRule", "liberator"),
        ("PodMonitor", "liberator-sidecars"),
        ("ServiceMonitor", "liberator-eventstore"),
        ("Service", "liberator-eventstore-metrics"),
        ("ConfigMap", "liberator-dashboard"),
    ]:
        assert find(rendered, kind, name)["metadata"]["namespace"] == "liberator-system"
    config_map = find(rendered, "ConfigMap", "liberator-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["liberator.json"]) == dashboard()
    assert not any(
        d["kind"] == "ServiceMonitor" and "operator" in d["metadata"]["name"] for d in rendered
    ), "the operator exports no Prometheus metrics"


def test_service_monitor_reaches_the_event_store_metrics_port(
    rendered: list[dict[str, Any]],
) -> None:
    monitor = find(rendered, "ServiceMonitor", "liberator-eventstore")
    service = find(rendered, "Service", "liberator-eventstore-metrics")
    deployment = find(rendered, "Deployment", "liberator-eventstore")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    # Selects the event store and nothing else of the base.
    assert [
        s["metadata"]["name"]
        for s in rendered
        if s["kind"] == "Service"
        and monitor["spec"]["selector"]["matchLabels"].items()
        <= s["metadata"].get("labels", {}).items()
    ] == ["liberator-eventstore-metrics"]
    template = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["endpoints"]
    [port] = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    [container] = template["spec"]["containers"]
    [target] = [p for p in container["ports"] if p["name"] == port["targetPort"]]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert str(target["containerPort"]) == env["LIBERATOR_HTTP_PORT"]
    assert endpoint["path"] == template["metadata"]["annotations"]["prometheus.io/path"]


def test_pod_monitor_scrapes_each_injected_sidecar_and_nothing_else(
    rendered: list[dict[str, Any]],
) -> None:
    monitor = find(rendered, "PodMonitor", "liberator-sidecars")["spec"]
    assert monitor["namespaceSelector"] == {"any": True}
    # A pod with two publishers, as the webhook patches it.
    body = pod(
        labels={"app": "quotes"},
        containers=[
            {"name": "app", "image": "busybox", "ports": [{"name": "http", "containerPort": 8080}]}
        ],
    )
    settings = OperatorSettings(image="example/liberator:1", namespace="liberator-system")
    injection = build_patch(
        body, "shop", [publisher("quotes"), publisher("prices")], settings, native=True
    )
    injected = jsonpatch.apply_patch(body, injection.ops)
    assert monitor["selector"] == {"matchLabels": {INJECTED_LABEL: "true"}}
    assert monitor["selector"]["matchLabels"].items() <= injected["metadata"]["labels"].items()
    [endpoint] = monitor["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    [keep] = [r for r in endpoint["relabelings"] if r["action"] == "keep"]
    assert keep["sourceLabels"] == ["__meta_kubernetes_pod_container_port_name"]
    containers = injected["spec"]["containers"] + injected["spec"].get("initContainers", [])
    scraped = {
        c["name"]
        for c in containers
        for p in c.get("ports", [])
        if re.fullmatch(keep["regex"], p["name"])
    }  # Prometheus anchors the regex
    assert scraped == {"liberator-quotes", "liberator-prices"}
    assert any(
        r.get("targetLabel") == "container"
        and r["sourceLabels"] == ["__meta_kubernetes_pod_container_name"]
        for r in endpoint["relabelings"]
    )

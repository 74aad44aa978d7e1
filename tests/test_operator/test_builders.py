"""Unit tests of the operator's pure builders: no server involved."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import jsonpatch
import pytest

from liberator_operator.conditions import find, lag_text, set_condition, summary_reason
from liberator_operator.datastatus import (
    DataStatus,
    parse_seed_progress,
    parse_status_record,
    resume_point_condition,
    resume_point_status,
    stall_condition,
)
from liberator_operator.job import build_seed_job, job_name, job_phase, seed_args
from liberator_operator.observe import parked_message
from liberator_operator.patch import INJECTED_ANNOTATION, build_patch
from liberator_operator.provisioning import build_plan
from liberator_operator.restart import control_for
from liberator_operator.selector import matches
from liberator_operator.settings import OperatorSettings
from liberator_operator.sidecar import (
    build_contract_env,
    build_sidecar,
    container_name,
    sidecar_running,
)
from liberator_publisher.core.contract import CONTRACT
from tests.test_operator.builders import pod, publisher

SETTINGS = OperatorSettings(image="example/liberator:1", namespace="liberator-system")
CONTRACT_NAMES = [v.name for v in CONTRACT]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def apply(body: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = jsonpatch.apply_patch(body, ops)
    return result


# -- sidecar --------------------------------------------------------------------------------------


def test_sidecar_env_follows_the_contract_and_takes_secrets_by_reference() -> None:
    p = publisher(
        entity={
            "type": "quote",
            "idField": "quoteId",
            "eventContextField": "_ctx",
            "versionField": "v",
            "excludeFields": ["secret", "internal"],
            "source": "//sales/quotes",
        }
    )
    container = build_sidecar(p, SETTINGS, port=8099, native=True)
    env = env_of(container)
    names = [e["name"] for e in container["env"]]
    assert names == [n for n in CONTRACT_NAMES if n in names], "env is in contract order"
    assert set(names) <= set(CONTRACT_NAMES)
    assert env["LIBERATOR_MONGO_URI"] == {"secretKeyRef": {"name": "quotes-mongo", "key": "uri"}}
    assert env["LIBERATOR_DATABASE"] == "sales"
    assert env["LIBERATOR_COLLECTION"] == "quotes"
    assert env["LIBERATOR_OUTBOX_COLLECTION"] == "quotes.outbox"
    assert env["LIBERATOR_ENTITY_TYPE"] == "quote"
    assert env["LIBERATOR_TOPIC"] == "integration-events"
    assert env["LIBERATOR_ID_FIELD"] == "quoteId"
    assert env["LIBERATOR_VERSION_FIELD"] == "v"
    assert env["LIBERATOR_EVENT_CONTEXT_FIELD"] == "_ctx"
    assert env["LIBERATOR_EXCLUDE_FIELDS"] == "secret,internal"
    assert env["LIBERATOR_SOURCE"] == "//sales/quotes"
    assert env["LIBERATOR_PUBLISHER"] == "shop/quotes"
    assert env["LIBERATOR_HTTP_PORT"] == "8099"
    assert env["LIBERATOR_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "PUBSUB_EMULATOR_HOST" not in env  # no emulator configured
    assert container["command"] == ["liberator", "publish"]
    assert container["image"] == "example/liberator:1"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8099}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8099}
    # No secret value is ever copied into the pod spec.
    assert "quotes-mongo" not in json.dumps([e.get("value") for e in container["env"]])


def test_every_required_contract_variable_is_set() -> None:
    env = build_contract_env(publisher(), SETTINGS)
    missing = [v.name for v in CONTRACT if v.required and v.name not in env]
    assert missing == []


def test_emulator_host_and_redis_secret_reach_the_sidecar() -> None:
    settings = OperatorSettings(pubsub_emulator_host="127.0.0.1:8085")
    p = publisher(redis={"secretRef": {"name": "redis", "key": "connection"}})
    env = env_of(build_sidecar(p, settings, port=8100, native=False))
    assert env["PUBSUB_EMULATOR_HOST"] == "127.0.0.1:8085"
    assert env["LIBERATOR_REDIS_URL"] == {"secretKeyRef": {"name": "redis", "key": "connection"}}


def test_native_sidecar_is_an_always_restarting_init_container() -> None:
    native = build_sidecar(publisher(), SETTINGS, port=8099, native=True)
    regular = build_sidecar(publisher(), SETTINGS, port=8099, native=False)
    assert native["restartPolicy"] == "Always"
    assert "restartPolicy" not in regular


def test_container_names_are_valid_dns_labels() -> None:
    assert container_name("quotes") == "liberator-quotes"
    long = container_name("a" * 200)
    assert len(long) <= 63
    assert long != container_name("a" * 199), "distinct names stay distinct"
    assert container_name("orders.v2") == "liberator-orders-v2"


# -- patch ----------------------------------------------------------------------------------------


def test_matching_pod_gets_one_native_sidecar_and_the_annotation() -> None:
    body = pod(labels={"app": "quotes"})
    injection = build_patch(body, "shop", [publisher()], SETTINGS, native=True)
    result = apply(body, injection.ops)
    assert [c["name"] for c in result["spec"]["initContainers"]] == ["liberator-quotes"]
    assert [c["name"] for c in result["spec"]["containers"]] == ["app"]
    assert result["metadata"]["annotations"][INJECTED_ANNOTATION] == "quotes"
    assert result["metadata"]["labels"]["liberator.io/injected"] == "true"


def test_container_mode_appends_a_regular_container() -> None:
    body = pod(labels={"app": "quotes"}, initContainers=[{"name": "migrate", "image": "x"}])
    result = apply(body, build_patch(body, "shop", [publisher()], SETTINGS, native=False).ops)
    assert [c["name"] for c in result["spec"]["containers"]] == ["app", "liberator-quotes"]
    assert [c["name"] for c in result["spec"]["initContainers"]] == ["migrate"]


def test_native_mode_keeps_app_init_containers_first() -> None:
    body = pod(labels={"app": "quotes"}, initContainers=[{"name": "migrate", "image": "x"}])
    result = apply(body, build_patch(body, "shop", [publisher()], SETTINGS, native=True).ops)
    assert [c["name"] for c in result["spec"]["initContainers"]] == ["migrate", "liberator-quotes"]


@pytest.mark.parametrize(
    ("labels", "annotations", "namespace", "reason"),
    [
        ({"app": "orders"}, None, "shop", "no EntityPublisher matches"),
        ({"app": "quotes"}, {"liberator.io/inject": "false"}, "shop", "opted out"),
        ({"app": "quotes"}, None, "kube-system", "excluded"),
        ({"app": "quotes"}, None, "liberator-system", "excluded"),
        ({"app": "quotes"}, None, "other", "no EntityPublisher matches"),
    ],
)
def test_pods_that_get_nothing(
    labels: dict[str, str], annotations: dict[str, str] | None, namespace: str, reason: str
) -> None:
    body = pod(labels=labels, annotations=annotations, namespace=namespace)
    injection = build_patch(body, namespace, [publisher()], SETTINGS, native=True)
    assert injection.ops == []
    assert reason in injection.reason


def test_paused_publisher_injects_nothing() -> None:
    body = pod(labels={"app": "quotes"})
    assert build_patch(body, "shop", [publisher(paused=True)], SETTINGS, native=True).ops == []


def test_reinvocation_adds_nothing() -> None:
    body = pod(labels={"app": "quotes"}, annotations={"team": "sales"})
    once = apply(body, build_patch(body, "shop", [publisher()], SETTINGS, native=True).ops)
    again = build_patch(once, "shop", [publisher()], SETTINGS, native=True)
    assert again.ops == []
    assert again.reason == "already injected"
    assert once["metadata"]["annotations"]["team"] == "sales"


def test_several_publishers_get_one_sidecar_each_on_distinct_ports() -> None:
    body = pod(
        labels={"app": "quotes", "tier": "api"},
        containers=[{"name": "app", "image": "x", "ports": [{"containerPort": 8100}]}],
    )
    pubs = [publisher("quotes"), publisher("audit", selector={"matchLabels": {"tier": "api"}})]
    injection = build_patch(body, "shop", pubs, SETTINGS, native=True)
    result = apply(body, injection.ops)
    sidecars = result["spec"]["initContainers"]
    assert [c["name"] for c in sidecars] == ["liberator-audit", "liberator-quotes"]
    ports = [env_of(c)["LIBERATOR_HTTP_PORT"] for c in sidecars]
    assert ports == ["8099", "8101"], "8100 is taken by the app container"
    assert [c["ports"][0]["containerPort"] for c in sidecars] == [8099, 8101]
    assert result["metadata"]["annotations"][INJECTED_ANNOTATION] == "audit,quotes"
    # A third publisher appearing later is added on a re-create without duplicating the others.
    pubs.append(publisher("zeta", selector={"matchLabels": {"app": "quotes"}}))
    later = apply(result, build_patch(result, "shop", pubs, SETTINGS, native=True).ops)
    assert [c["name"] for c in later["spec"]["initContainers"]] == [
        "liberator-audit",
        "liberator-quotes",
        "liberator-zeta",
    ]
    assert env_of(later["spec"]["initContainers"][2])["LIBERATOR_HTTP_PORT"] == "8102"


def test_pod_without_labels_matches_only_an_allowed_empty_selector() -> None:
    body = pod()
    everything = publisher(selector={}, allowMatchAll=True)
    result = apply(body, build_patch(body, "shop", [everything], SETTINGS, native=False).ops)
    assert result["metadata"]["labels"] == {"liberator.io/injected": "true"}
    assert build_patch(body, "shop", [publisher()], SETTINGS, native=False).ops == []


# -- selector -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
        (
            {"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]},
            {"a": "2"},
            True,
        ),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {}, False),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
        (
            {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]},
            {"a": "1"},
            False,
        ),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": "x"}, False),
        ({}, {"anything": "x"}, True),
    ],
)
def test_selector(selector: Any, labels: dict[str, str], expected: bool) -> None:
    assert matches(selector, labels) is expected


# -- job ------------------------------------------------------------------------------------------


def test_seed_job_runs_liberator_seed_with_the_contract_env() -> None:
    spec: Any = {
        "publisher": "quotes",
        "mode": "history",
        "batchSize": 200,
        "rateLimit": 50,
        "backoffLimit": 2,
        "filter": {"status": "open", "n": {"$gt": 1}},
    }
    job = build_seed_job(
        "shop", "initial", uid="u-1", spec=spec, publisher=publisher(), settings=SETTINGS
    )
    assert job["metadata"]["name"] == "liberator-seed-initial"
    assert job["metadata"]["ownerReferences"][0] == {
        "apiVersion": "liberator.io/v1alpha1",
        "kind": "EventSeed",
        "name": "initial",
        "uid": "u-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    container = job["spec"]["template"]["spec"]["containers"][0]
    args = container["command"]
    assert args[:2] == ["liberator", "seed"]
    flags = dict(zip(args[2::2], args[3::2], strict=True))
    assert flags == {
        "--topic": "integration-events.seed",
        "--mode": "history",
        "--batch-size": "200",
        "--rate-limit": "50",
        "--seed-id": "shop/initial",
        "--filter": '{"n":{"$gt":1},"status":"open"}',
    }
    env = env_of(container)
    assert env["LIBERATOR_SEED"] == "shop/initial"
    assert env["LIBERATOR_MONGO_URI"] == {"secretKeyRef": {"name": "quotes-mongo", "key": "uri"}}
    assert "LIBERATOR_TOPIC" not in env
    assert job["spec"]["backoffLimit"] == 2
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["template"]["metadata"]["annotations"]["liberator.io/inject"] == "false"


def test_seed_topic_override_and_no_filter() -> None:
    spec: Any = {"publisher": "quotes", "topic": "replay-1"}
    args = seed_args("shop", "s", spec, publisher())
    assert "--filter" not in args
    assert args[args.index("--topic") + 1] == "replay-1"
    assert args[args.index("--mode") + 1] == "latest"


def test_seed_service_account_and_allow_empty_reach_the_job() -> None:
    minimal: Any = {"publisher": "quotes"}
    plain = build_seed_job(
        "shop", "s", uid="u", spec=minimal, publisher=publisher(), settings=SETTINGS
    )
    assert "serviceAccountName" not in plain["spec"]["template"]["spec"]  # namespace default
    assert "--allow-empty" not in plain["spec"]["template"]["spec"]["containers"][0]["command"]
    spec: Any = {"publisher": "quotes", "serviceAccountName": "quotes-seeder", "allowEmpty": True}
    job = build_seed_job("shop", "s", uid="u", spec=spec, publisher=publisher(), settings=SETTINGS)
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "quotes-seeder"
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "--allow-empty"


@pytest.mark.parametrize(
    ("status", "running"),
    [
        ({"phase": "Pending"}, False),
        (
            {
                "phase": "Pending",
                "initContainerStatuses": [
                    {
                        "name": "liberator-quotes",
                        "state": {"waiting": {"reason": "ContainerCreating"}},
                    }
                ],
            },
            False,
        ),
        (
            {
                "phase": "Pending",
                "initContainerStatuses": [
                    {"name": "liberator-quotes", "state": {"running": {"startedAt": "T"}}}
                ],
            },
            True,
        ),
        (
            {
                "phase": "Running",
                "containerStatuses": [
                    {"name": "app", "state": {"running": {}}},
                    {"name": "liberator-quotes", "state": {"running": {}}},
                ],
            },
            True,
        ),
        (
            {
                "phase": "Running",
                "initContainerStatuses": [
                    {"name": "liberator-quotes", "state": {"terminated": {"exitCode": 1}}}
                ],
                "containerStatuses": [{"name": "app", "state": {"running": {}}}],
            },
            False,
        ),
        (
            {
                "phase": "Running",
                "initContainerStatuses": [{"name": "liberator-other", "state": {"running": {}}}],
            },
            False,
        ),
    ],
)
def test_sidecar_running_means_its_container_runs(status: dict[str, Any], running: bool) -> None:
    assert sidecar_running({"metadata": {}, "status": status}, "quotes") is running
    deleting = {"metadata": {"deletionTimestamp": "T"}, "status": status}
    assert sidecar_running(deleting, "quotes") is False


def test_parked_message_gives_the_recovery_command() -> None:
    data = DataStatus(
        leader="quotes-7d9f-abcde",
        epoch=3,
        parked_reason="ChangeStreamHistoryLost: resume point fell off the oplog",
    )
    message = parked_message(publisher(), data)
    assert "ChangeStreamHistoryLost" in message
    assert (
        "kubectl exec -n shop quotes-7d9f-abcde -c liberator-quotes -- liberator publish "
        "--reset-checkpoint"
    ) in message
    assert "EventSeed" in message
    assert "restart the" not in message
    unknown = parked_message(publisher(), DataStatus(parked_reason="invalidated"))
    assert "kubectl exec -n shop POD -c liberator-quotes --" in unknown


def test_job_name_is_deterministic_and_short() -> None:
    assert job_name("a") == job_name("a")
    long = job_name("x" * 250)
    assert len(long) <= 63
    assert long != job_name("x" * 249)


@pytest.mark.parametrize(
    ("status", "phase"),
    [
        (None, "Pending"),
        ({}, "Pending"),
        ({"active": 1}, "Running"),
        ({"conditions": [{"type": "Complete", "status": "True"}]}, "Succeeded"),
        ({"conditions": [{"type": "SuccessCriteriaMet", "status": "True"}]}, "Succeeded"),
        ({"conditions": [{"type": "Failed", "status": "True"}], "failed": 4}, "Failed"),
        ({"conditions": [{"type": "Failed", "status": "False"}], "active": 1}, "Running"),
    ],
)
def test_job_phase(status: Any, phase: str) -> None:
    assert job_phase(None if status is None else {"status": status}) == phase


# -- conditions -----------------------------------------------------------------------------------


def test_condition_transition_time_moves_only_on_status_change() -> None:
    first = set_condition(None, "Ready", True, "Provisioned", "ok", now="T1", generation=1)
    same = set_condition(first, "Ready", True, "Provisioned", "still ok", now="T2", generation=2)
    flipped = set_condition(same, "Ready", False, "TopicError", "bad", now="T3")
    assert find(first, "Ready") == {
        "type": "Ready",
        "status": "True",
        "reason": "Provisioned",
        "message": "ok",
        "lastTransitionTime": "T1",
        "observedGeneration": 1,
    }
    assert find(same, "Ready")["lastTransitionTime"] == "T1"  # type: ignore[index]
    assert find(same, "Ready")["message"] == "still ok"  # type: ignore[index]
    assert find(flipped, "Ready")["lastTransitionTime"] == "T3"  # type: ignore[index]


def test_conditions_keep_their_order() -> None:
    conds = set_condition(None, "TopicReady", True, "A", "", now="T")
    conds = set_condition(conds, "Ready", True, "B", "", now="T")
    conds = set_condition(conds, "TopicReady", False, "C", "", now="T")
    assert [c["type"] for c in conds] == ["TopicReady", "Ready"]


# -- provisioning plan ----------------------------------------------------------------------------


def test_plan_names_topics_and_subscriptions() -> None:
    p = publisher(
        pubsub={
            "project": "p1",
            "topic": "events",
            "subscriptions": [
                {
                    "name": "billing",
                    "source": "live",
                    "ackDeadlineSeconds": 30,
                    "enableMessageOrdering": True,
                    "filter": 'attributes.ce-type = "quote.purchased"',
                    "deadLetter": {"topic": "billing-dead", "maxDeliveryAttempts": 7},
                },
                {
                    "name": "store-seed",
                    "source": "seed",
                    "ackDeadlineSeconds": 60,
                    "enableMessageOrdering": False,
                },
            ],
        }
    )
    plan = build_plan(p)
    assert plan.topics == (
        "projects/p1/topics/events",
        "projects/p1/topics/events.seed",
        "projects/p1/topics/billing-dead",
    )
    billing, seed = plan.subscriptions
    assert billing.name == "projects/p1/subscriptions/billing"
    assert billing.topic == "projects/p1/topics/events"
    assert billing.dead_letter_topic == "projects/p1/topics/billing-dead"
    assert billing.max_delivery_attempts == 7
    assert seed.topic == "projects/p1/topics/events.seed"
    assert seed.enable_message_ordering is False


# -- data plane status ----------------------------------------------------------------------------


def test_status_record_from_the_publishers_json() -> None:
    record = json.dumps(
        {
            "pod": "app-1",
            "epoch": 3,
            "lastEventTime": "2026-01-01T00:00:00Z",
            "captureLagSeconds": 0.25,
            "relayLagSeconds": 0.1,
            "backlog": 4,
            "parked": "",
            "updatedAt": "2026-01-01T00:00:01Z",
        }
    )
    data = parse_status_record(record)
    assert data is not None
    assert (data.leader, data.epoch, data.lag_seconds, data.backlog, data.parked_reason) == (
        "app-1",
        3,
        0.25,
        4,
        None,
    )
    parked = parse_status_record(
        {"pod": "app-2", "epoch": "5", "parked": "ChangeStreamHistoryLost"}
    )
    assert parked is not None
    assert (parked.epoch, parked.parked_reason) == (5, "ChangeStreamHistoryLost")


@pytest.mark.parametrize("raw", [None, "", "not json", "[1,2]", {}])
def test_missing_or_garbled_status_record_is_none(raw: Any) -> None:
    assert parse_status_record(raw) is None


def test_bad_fields_are_left_out_not_fatal() -> None:
    data = parse_status_record({"pod": "a", "epoch": "many", "backlog": None})
    assert data is not None
    assert (data.leader, data.epoch, data.backlog) == ("a", None, None)


def test_seed_progress_hash() -> None:
    progress = parse_seed_progress(
        {
            "phase": "Running",
            "seeded": "10",
            "skipped": "2",
            "failed": "0",
            "total": "20",
            "startedAt": "2026-01-01T00:00:00Z",
        }
    )
    assert progress is not None
    assert (progress.seeded, progress.skipped, progress.failed, progress.total) == (10, 2, 0, 20)
    assert progress.started_at == "2026-01-01T00:00:00Z"
    assert parse_seed_progress({}) is None


def test_status_column_gives_the_top_reason() -> None:
    ready = set_condition(None, "Ready", True, "Provisioned", "", now="T")
    leading = set_condition(ready, "Publishing", True, "Leading", "", now="T")
    assert summary_reason(None, paused=False) == "Unknown"
    assert summary_reason(leading, paused=False) == "Publishing"
    assert summary_reason(leading, paused=True) == "Paused"
    parked = set_condition(leading, "Publishing", False, "Parked", "", now="T")
    assert summary_reason(parked, paused=False) == "Parked"
    broken = set_condition(parked, "Ready", False, "MongoSecretMissing", "", now="T")
    assert summary_reason(broken, paused=False) == "MongoSecretMissing"  # first things first
    stalled = set_condition(leading, "Stalled", True, "NothingPublished", "", now="T")
    assert summary_reason(stalled, paused=False) == "Stalled"
    moving = set_condition(stalled, "Stalled", False, "Moving", "", now="T")
    assert summary_reason(moving, paused=False) == "Publishing"
    risky = set_condition(moving, "ResumePointAtRisk", True, "ResumePointAtRisk", "", now="T")
    assert summary_reason(risky, paused=False) == "ResumePointAtRisk"
    both = set_condition(risky, "Stalled", True, "CaptureNotMoving", "", now="T")
    assert summary_reason(both, paused=False) == "Stalled"  # the cause before its effect
    assert (
        summary_reason(
            set_condition(risky, "ResumePointAtRisk", "Unknown", "NoLeader", "", now="T"),
            paused=False,
        )
        == "Publishing"
    )
    assert (
        summary_reason(
            set_condition(stalled, "Publishing", False, "Parked", "", now="T"), paused=False
        )
        == "Parked"
    )  # a park says more than a stall


def test_stalled_condition_from_the_leaders_record() -> None:
    assert stall_condition(None)[0] == "Unknown"  # never False without a record
    moving = parse_status_record({"pod": "p", "epoch": 1, "parked": ""})
    assert stall_condition(moving)[:2] == ("False", "Moving")
    stuck = parse_status_record(
        {
            "pod": "p",
            "stalled": {
                "reason": "CaptureNotMoving",
                "message": "checkpoint has not moved",
                "since": "T0",
            },
        }
    )
    status, reason, message = stall_condition(stuck)
    assert (status, reason) == ("True", "CaptureNotMoving")
    assert message == "checkpoint has not moved (since T0)"
    parked = parse_status_record({"pod": "p", "parked": "history lost", "stalled": {"reason": "x"}})
    assert stall_condition(parked)[:2] == ("False", "Parked")
    paused = parse_status_record({"pod": "p", "paused": True})
    assert stall_condition(paused)[:2] == ("False", "Paused")


AT_RISK_RECORD = {
    "pod": "p",
    "resumePoint": {
        "status": "True",
        "reason": "ResumePointAtRisk",
        "message": "the capture checkpoint is near",
        "windowSeconds": 3600.0,
        "oldestEntry": "2026-01-01T00:00:00.000Z",
        "headroomSeconds": {"capture": 600.0, "relay": "far", "bogus": None},
    },
}


def test_resume_point_condition_from_the_leaders_record() -> None:
    assert resume_point_condition(None)[:2] == ("Unknown", "NoLeader")  # never a safe False
    older = parse_status_record({"pod": "p", "epoch": 1})  # a sidecar that does not report it
    assert resume_point_condition(older)[:2] == ("Unknown", "OplogWindowUnknown")
    garbled = parse_status_record({"pod": "p", "resumePoint": {"status": "maybe"}})
    assert resume_point_condition(garbled)[0] == "Unknown"
    at_risk = parse_status_record(AT_RISK_RECORD)
    assert resume_point_condition(at_risk) == (
        "True",
        "ResumePointAtRisk",
        "the capture checkpoint is near",
    )
    # status.resumePoint keeps what the CRD types: numbers for the headroom.
    assert resume_point_status(at_risk) == {
        "windowSeconds": 3600.0,
        "oldestEntry": "2026-01-01T00:00:00.000Z",
        "headroomSeconds": {"capture": 600.0},
    }
    assert resume_point_status(None) is None and resume_point_status(older) is None


def test_restart_time_older_than_the_oplog_is_refused_where_the_window_is_known() -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    spec = {"restartFrom": {"id": "r1", "time": "2025-12-31T23:00:00Z"}}
    known = {"resumePoint": {"oldestEntry": "2026-01-01T00:00:00.000Z"}}
    record, refused = control_for(spec, known, now)
    assert record.restartFrom is None and refused is not None
    assert refused.reason == "OlderThanOplog"
    assert (
        "spec.restartFrom.time 2025-12-31T23:00:00Z is older than the oldest oplog entry "
        "(2026-01-01T00:00:00.000Z"
    ) in refused.message
    assert "EventSeed" in refused.message and "set a new id" in refused.message
    # At or after the oldest entry, or with the window unknown, the request goes to the leader.
    later = {"restartFrom": {"id": "r2", "time": "2026-01-01T00:00:00Z"}}
    assert control_for(later, known, now)[0].restartFrom is not None
    assert control_for(spec, {}, now)[0].restartFrom is not None
    # A request the leader already carried out is not refused after the fact.
    done = {**known, "restart": {"id": "r1"}}
    assert control_for(spec, done, now)[1] is None


def test_checkpoint_ages_keep_only_well_formed_entries() -> None:
    data = parse_status_record(
        {
            "pod": "p",
            "checkpoints": {
                "capture": {"movedAt": "T1", "ageSeconds": 2.5},
                "relay": {"ageSeconds": "soon"},
                "bogus": "x",
            },
        }
    )
    assert data is not None and data.checkpoints == {
        "capture": {"movedAt": "T1", "ageSeconds": 2.5}
    }
    listed = parse_status_record({"pod": "p", "checkpoints": []})
    assert listed is not None and listed.checkpoints is None


def test_lag_column_never_reads_zero_when_unknown() -> None:
    assert lag_text(None) == "Unknown"
    assert lag_text(0.0) == "0.0s"
    assert lag_text(0.46) == "0.5s"
    assert lag_text(75) == "75s"
    assert lag_text(7560) == "2.1h"

"""The sidecar's metrics exposition: pure, and as a running sidecar serves it."""

from __future__ import annotations

from typing import get_type_hints

from liberator_publisher.sidecar import source
from liberator_publisher.sidecar.metrics import _DECLARED, FAILED_STAGES, Metrics
from tests.e2e.test_monitoring import METRIC, alerts, dashboard_queries, exposed_names
from tests.support.publisher import Publisher, eventually


def samples(metrics: Metrics) -> dict[str, float]:
    out = {}
    for line in metrics.render().decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_labelled_series_exist_at_zero_before_any_failure() -> None:
    got = samples(Metrics())
    for stage in ("capture", "relay"):
        assert got[f'liberator_events_failed_total{{stage="{stage}"}}'] == 0.0
    for reason in (
        "history_lost",
        "resume_token_rejected",
        "stream_fatal",
        "invalidated",
        "checkpoint_invalid",
    ):
        assert got[f'liberator_parked{{reason="{reason}"}}'] == 0.0


def test_a_park_sets_its_reason_to_one_and_clearing_it_back_to_zero() -> None:
    metrics = Metrics()
    metrics.set_parked("history_lost")
    got = samples(metrics)
    assert got['liberator_parked{reason="history_lost"}'] == 1.0
    assert got['liberator_parked{reason="invalidated"}'] == 0.0
    metrics.set_parked("")
    assert samples(metrics)['liberator_parked{reason="history_lost"}'] == 0.0


def test_every_code_a_stream_can_park_with_is_a_known_reason() -> None:
    codes = set(source._LOST_CODES.values()) | {label for _, label in source._LOST_PHRASES}
    codes |= {"invalidated", "checkpoint_invalid"}  # raised by name in source.py
    assert codes == set(source.PARK_REASONS)
    assert FAILED_STAGES == ("capture", "relay")


def test_a_running_sidecar_exports_every_metric_the_rules_and_dashboard_name(
    publisher: Publisher,
) -> None:
    # The scrape of a real `liberator publish`, leading, not just the registry's rendering.
    car = publisher.start()
    eventually(lambda: car.metric("liberator_leader") == 1.0, what="the sidecar leads")
    status, body = car.get("/metrics")
    assert status == 200
    scraped = exposed_names(body)
    named = {
        name
        for text in [rule["expr"] for rule in alerts()] + dashboard_queries()
        for name in METRIC.findall(text)
        if name.startswith("liberator_") and not name.startswith("liberator_eventstore_")
    }
    assert {"liberator_resume_point_at_risk", "liberator_stalled"} <= named
    assert named - scraped == set(), "named by the rules or dashboard, not scraped"


def test_every_declared_metric_is_an_attribute_of_its_type() -> None:
    # The table declares them and the class annotations type them: the two must agree.
    hints = get_type_hints(Metrics)
    assert set(hints) - {"registry"} == set(_DECLARED)
    metrics = Metrics()
    for attribute, (kind, name, _, _) in _DECLARED.items():
        assert hints[attribute] is kind, attribute
        assert isinstance(getattr(metrics, attribute), kind), attribute
        assert name.startswith("liberator_"), name

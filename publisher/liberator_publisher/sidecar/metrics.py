"""The sidecar's Prometheus metrics, each in its own registry so tests and replicas never clash."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from liberator_publisher.core.headroom import Headroom
from liberator_publisher.core.stall import STALL_REASONS
from liberator_publisher.sidecar.source import PARK_REASONS
from liberator_publisher.state.checkpoint import LOOPS

__all__ = ["FAILED_STAGES", "Metrics"]

FAILED_STAGES = ("capture", "relay")
"""The ``stage`` label of ``liberator_events_failed_total``."""

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


_Declared = tuple[type[Counter] | type[Gauge] | type[Histogram], str, str, tuple[str, ...]]
"""A metric's type, name, help text and label names."""

_DECLARED: dict[str, _Declared] = {
    "captured": (Counter, "liberator_events_captured", "Changes written to the outbox.", ()),
    "published": (
        Counter,
        "liberator_events_published",
        "Outbox events acknowledged by Pub/Sub.",
        (),
    ),
    "failed": (
        Counter,
        "liberator_events_failed",
        "Events that cannot be published (status failed).",
        ("stage",),
    ),
    "publish_errors": (
        Counter,
        "liberator_publish_errors",
        "Publish attempts that failed and will be retried.",
        (),
    ),
    "backlog": (Gauge, "liberator_outbox_backlog", "Outbox events still pending.", ()),
    "capture_lag": (
        Gauge,
        "liberator_capture_lag_seconds",
        "Age of the last captured change when it was written (0 when the stream is idle).",
        (),
    ),
    "relay_lag": (
        Gauge,
        "liberator_relay_lag_seconds",
        "Time from capture to publish ack of the last event.",
        (),
    ),
    "publish_latency": (
        Histogram,
        "liberator_publish_latency_seconds",
        "Time from publish call to Pub/Sub ack.",
        (),
    ),
    "leader": (Gauge, "liberator_leader", "1 while this replica holds the lease.", ()),
    "epoch": (Gauge, "liberator_epoch", "Fencing epoch of the current lease (0 = none).", ()),
    "parked": (
        Gauge,
        "liberator_parked",
        "1 while the publisher is parked on a fatal stream error.",
        ("reason",),
    ),
    "fenced": (
        Counter,
        "liberator_checkpoint_refused",
        "Checkpoint writes refused because a newer epoch holds the lease.",
        (),
    ),
    "stalled": (
        Gauge,
        "liberator_stalled",
        "1 while the publisher is stalled for this reason (stall.py).",
        ("reason",),
    ),
    "checkpoint_age": (
        Gauge,
        "liberator_checkpoint_age_seconds",
        "Seconds since the loop's checkpoint position was last "
        "written (leader only; 0 without a checkpoint).",
        ("loop",),
    ),
    "oplog_window": (
        Gauge,
        "liberator_oplog_window_seconds",
        "Seconds between the oldest and newest oplog entry (leader; NaN while unknown).",
        (),
    ),
    "headroom": (
        Gauge,
        "liberator_resume_headroom_seconds",
        "Seconds between the loop's checkpoint position and the oldest "
        "oplog entry (leader; NaN while unknown).",
        ("loop",),
    ),
    "at_risk": (
        Gauge,
        "liberator_resume_point_at_risk",
        "1 while the loop's headroom is below the margin of the oplog window (headroom.py).",
        ("loop",),
    ),
}
"""Every metric by the :class:`Metrics` attribute that holds it, in the order /metrics lists
them."""


@dataclass
class Metrics:
    """Every metric of ``liberator publish``; names are prefixed ``liberator_``.

    Each is declared in ``_DECLARED``; the attributes below type them (a test checks that the
    two agree)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    """Where the metrics live; ``/metrics`` renders exactly this registry."""
    captured: Counter = field(init=False)
    published: Counter = field(init=False)
    failed: Counter = field(init=False)
    publish_errors: Counter = field(init=False)
    backlog: Gauge = field(init=False)
    capture_lag: Gauge = field(init=False)
    relay_lag: Gauge = field(init=False)
    publish_latency: Histogram = field(init=False)
    leader: Gauge = field(init=False)
    epoch: Gauge = field(init=False)
    parked: Gauge = field(init=False)
    fenced: Counter = field(init=False)
    stalled: Gauge = field(init=False)
    checkpoint_age: Gauge = field(init=False)
    oplog_window: Gauge = field(init=False)
    headroom: Gauge = field(init=False)
    at_risk: Gauge = field(init=False)

    def __post_init__(self) -> None:
        r = self.registry
        for attribute, (kind, name, documentation, labels) in _DECLARED.items():
            metric = (
                Histogram(name, documentation, labels, registry=r, buckets=_LATENCY_BUCKETS)
                if kind is Histogram
                else kind(name, documentation, labels, registry=r)
            )
            setattr(self, attribute, metric)
        # Every labelled series exists at 0 from the start, so alerts and dashboards see it
        # before the first failure (an absent series is not 0 to PromQL).
        for stage in FAILED_STAGES:
            self.failed.labels(stage=stage)
        self.set_parked("")
        self.set_stalled("")
        for loop in LOOPS:
            self.checkpoint_age.labels(loop=loop)
            self.at_risk.labels(loop=loop)
        self.set_headroom(None)

    def lead(self, epoch: int) -> None:
        """A term starts under ``epoch``, unparked."""
        self.set_parked("")
        self.leader.set(1)
        self.epoch.set(epoch)

    def stand_by(self) -> None:
        """The term ended: a standby reports nothing of the leader's."""
        self.leader.set(0)
        self.epoch.set(0)
        self.set_stalled("")
        for loop in LOOPS:
            self.checkpoint_age.labels(loop=loop).set(0)
        self.set_headroom(None)

    def set_parked(self, reason: str) -> None:
        """Record a park: 1 for ``reason``, 0 for every other (``reason`` empty clears it)."""
        for known in PARK_REASONS:
            self.parked.labels(reason=known).set(0)
        if reason:
            self.parked.labels(reason=reason).set(1)

    def set_stalled(self, reason: str) -> None:
        """1 for ``reason``, 0 for every other (``reason`` empty: not stalled)."""
        for known in STALL_REASONS:
            self.stalled.labels(reason=known).set(1 if known == reason else 0)

    def set_headroom(self, verdict: Headroom | None) -> None:
        """The window, each loop's headroom and at-risk flag; NaN (unknown) without a verdict
        or for a loop the verdict has no position for."""
        nan = float("nan")
        window = verdict.window_seconds if verdict is not None else None
        self.oplog_window.set(nan if window is None else window)
        for loop in LOOPS:
            seconds = verdict.loops.get(loop) if verdict is not None else None
            self.headroom.labels(loop=loop).set(nan if seconds is None else seconds)
            self.at_risk.labels(loop=loop).set(
                1 if verdict is not None and loop in verdict.at_risk else 0
            )

    def render(self) -> bytes:
        """The Prometheus text exposition of the registry."""
        return generate_latest(self.registry)

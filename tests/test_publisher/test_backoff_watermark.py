"""The relay's pure parts: per-key backoff (core/backoff.py) and the watermark (core/watermark.py).

The time is passed in, so these run without a clock or a server.
"""

from __future__ import annotations

from liberator_publisher.core.backoff import KeyBackoff
from liberator_publisher.core.watermark import Watermark


def never_busy(_: str) -> bool:
    return False


def test_a_failure_holds_the_key_until_its_wait_is_over() -> None:
    backoff: KeyBackoff[str] = KeyBackoff(first_seconds=0.5, max_seconds=10.0)
    assert backoff.pause("a", now=100.0, own=True) == 0.5
    assert "a" in backoff and "b" not in backoff
    assert backoff.pause("a", now=100.1, own=True) is None  # already paused: the wait stands
    assert backoff.hold("a", "a-2") and backoff.hold("a", "a-3")
    assert not backoff.hold("b", "b-1")  # not paused: the caller sends it
    assert backoff.due(100.4, never_busy) == []
    assert backoff.due(100.5, never_busy) == [("a", ["a-2", "a-3"])]
    assert "a" not in backoff and len(backoff) == 0


def test_failures_in_a_row_double_the_wait_up_to_the_cap_and_a_success_resets_it() -> None:
    backoff: KeyBackoff[str] = KeyBackoff(first_seconds=0.5, max_seconds=3.0)
    waits = []
    now = 0.0
    for _ in range(5):
        wait = backoff.pause("k", now, own=True)
        assert wait is not None
        waits.append(wait)
        now += wait
        assert [key for key, _ in backoff.due(now, never_busy)] == ["k"]
    assert waits == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.succeeded("k")
    assert backoff.pause("k", now, own=True) == 0.5
    # Another key's history is its own.
    assert backoff.pause("other", now, own=True) == 0.5


def test_a_key_the_publisher_paused_earlier_resumes_at_once() -> None:
    backoff: KeyBackoff[str] = KeyBackoff()
    assert backoff.pause("k", now=5.0, own=False) == 0.0
    assert backoff.due(5.0, never_busy) == [("k", [])]
    assert backoff.pause("k", now=6.0, own=True) == 0.5  # not counted as a failure in a row


def test_a_key_with_messages_in_flight_is_not_due() -> None:
    backoff: KeyBackoff[int] = KeyBackoff()
    backoff.pause("busy", now=0.0, own=True)
    backoff.pause("idle", now=0.0, own=True)
    assert backoff.due(10.0, lambda key: key == "busy") == [("idle", [])]
    assert backoff.due(10.0, never_busy) == [("busy", [])]


def test_the_watermark_moves_over_settled_batches_only_in_order() -> None:
    mark: Watermark[str] = Watermark()
    assert mark.advance() is None
    first, second, third = mark.begin("p1"), mark.begin("p2"), mark.begin("p3")
    for stretch, events in ((first, 2), (second, 1), (third, 1)):
        for _ in range(events):
            Watermark.opened(stretch)
    Watermark.settled(second)
    Watermark.settled(third)
    assert mark.advance() is None  # the first batch still has two events in flight
    Watermark.settled(first)
    assert mark.advance() is None
    Watermark.settled(first)
    assert mark.advance() == "p3" and mark.position == "p3"
    empty = mark.begin("p4")  # a batch whose events were all filtered out
    assert empty.open == 0 and mark.advance() == "p4"

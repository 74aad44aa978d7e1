"""One rule for Pub/Sub resource ids, pure."""

from __future__ import annotations

import pytest

from liberator_publisher.names import RESOURCE_ID_RULE, is_resource_id


@pytest.mark.parametrize("value", ["abc", "quotes.events", "a" + "b" * 254, "Events~1+2%3"])
def test_ids_pubsub_accepts(value: str) -> None:
    assert is_resource_id(value)


@pytest.mark.parametrize("value", ["ab", "1abc", "a" * 256, "my events", "events/live",
                                   "goog-events", "GOOGLE", "projects/p/topics/t", ""])
def test_ids_pubsub_refuses(value: str) -> None:
    assert not is_resource_id(value)
    assert "not with 'goog'" in RESOURCE_ID_RULE

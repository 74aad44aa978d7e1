"""The seed's status for the operator: a Redis hash, ``liberator:seed:<seed-id>``, that mirrors
the progress (phase, counts, times).

Best effort: a Redis outage never stops the seed, and is logged once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import redis

from liberator_publisher.core.contract import seed_key

__all__ = ["SeedStatus"]

log = logging.getLogger("liberator_publisher.seed.seeder")  # the seed's lines share one logger


class SeedStatus:
    """The Redis hash for the operator; best effort, a Redis outage never stops the seed."""

    def __init__(self, url: str, seed_id: str) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._key = seed_key(seed_id)
        self._warned = False

    def update(self, fields: Mapping[str, str | int]) -> None:
        try:
            self._client.hset(self._key, mapping={k: v for k, v in fields.items()})
        except redis.RedisError as error:
            if not self._warned:
                log.warning("cannot write the seed status to Redis (%s): %s", self._key, error)
                self._warned = True

    def close(self) -> None:
        self._client.close()

"""The leader lease: one replica of a publisher runs the loops, fenced by an epoch.

``SET NX PX`` takes the lease and ``INCR`` gives the new term a fencing epoch, in one Lua script
so no term exists without its epoch. Renewal is a compare-and-``PEXPIRE``: only the holder's own
token extends it. The local deadline is measured from *before* each command was sent, so it never
outlives the server's expiry; the caller stops its loops before that deadline.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from liberator_publisher.core.contract import EPOCH_KEY_PREFIX, LEASE_KEY_PREFIX

__all__ = ["EPOCH_KEY_PREFIX", "LEASE_KEY_PREFIX", "Lease", "epoch_key", "lease_key"]


# Returns {new epoch, 0}, or {0, milliseconds the holder's lease has left} when it is held.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {redis.call('INCR', KEYS[2]), 0}
end
return {0, redis.call('PTTL', KEYS[1])}
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# Raise the epoch above a floor while holding the lease: Redis may have lost its data (it runs
# without persistence), and a restarted counter must still beat the epochs in the checkpoints.
_ADVANCE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if current < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[2])
end
return redis.call('INCR', KEYS[2])
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def lease_key(publisher: str) -> str:
    """Redis key of the lease of the ``<namespace>/<name>`` publisher."""
    return f"{LEASE_KEY_PREFIX}{publisher}"


def epoch_key(publisher: str) -> str:
    """Redis key of the fencing epoch counter of the publisher."""
    return f"{EPOCH_KEY_PREFIX}{publisher}"


class Lease:
    """This replica's view of the lease. Redis errors propagate; the caller decides."""

    def __init__(
        self,
        redis: Any,
        publisher: str,
        holder: str,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._keys = [lease_key(publisher), epoch_key(publisher)]
        # The pod name for people, plus a random part so two processes never share a token.
        self.token = f"{holder}/{uuid.uuid4().hex[:8]}"
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._advance = redis.register_script(_ADVANCE)
        self.epoch = 0
        """Fencing epoch of the current term; 0 when not held."""
        self.deadline = 0.0
        """Monotonic time by which the lease has surely expired unless renewed."""
        self.free_in: float | None = None
        """After a failed :meth:`try_acquire`: seconds the holder's lease had left (None when
        unknown), so a standby can try again right when it expires instead of a tick later."""

    @property
    def held(self) -> bool:
        """Whether this replica holds the lease as far as it can know (before the deadline)."""
        return self.epoch > 0 and self._clock() < self.deadline

    def remaining(self) -> float:
        """Seconds until the deadline (negative when past)."""
        return self.deadline - self._clock()

    def try_acquire(self) -> int:
        """Take the lease if it is free; return the new epoch, or 0 when another holds it."""
        sent = self._clock()
        epoch, left_ms = (
            int(v) for v in self._acquire(keys=self._keys, args=[self.token, self._ttl_ms()])
        )
        if epoch:
            self.epoch, self.deadline = epoch, sent + self.ttl_seconds
        # PTTL is negative when the key vanished meanwhile (-2) or has no expiry (-1).
        self.free_in = left_ms / 1000 if not epoch and left_ms >= 0 else None
        return epoch

    def advance_epoch(self, floor: int) -> int:
        """While holding the lease, take a new epoch above ``floor``; 0 if the lease is gone."""
        epoch = int(self._advance(keys=self._keys, args=[self.token, floor]))
        if epoch:
            self.epoch = epoch
        else:
            self.forget()
        return epoch

    def renew(self) -> bool:
        """Extend the lease; False when it was lost (expired, or another replica took it)."""
        sent = self._clock()
        if int(self._renew(keys=self._keys[:1], args=[self.token, self._ttl_ms()])):
            self.deadline = sent + self.ttl_seconds
            return True
        self.forget()
        return False

    def release(self) -> None:
        """Give the lease up now, so a standby need not wait for the TTL."""
        try:
            self._release(keys=self._keys[:1], args=[self.token])
        finally:
            self.forget()

    def forget(self) -> None:
        """Drop the term locally (after a loss, or when the deadline passed)."""
        self.epoch, self.deadline = 0, 0.0

    def holder(self) -> str | None:
        """The token of whoever holds the lease now, if anyone."""
        value = self._redis.get(self._keys[0])
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    def _ttl_ms(self) -> int:
        return max(1, int(self.ttl_seconds * 1000))

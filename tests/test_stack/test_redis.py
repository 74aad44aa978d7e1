"""Redis is real: SET NX PX and a Lua compare-and-expire, the primitives of the leader lease."""

from __future__ import annotations

import time

import redis

COMPARE_AND_EXPIRE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


def test_set_nx_px_and_compare_and_expire(redis_url: str, unique: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    key = f"smoke:lease:{unique}"
    assert client.set(key, "holder-a", nx=True, px=500) is True
    assert client.set(key, "holder-b", nx=True, px=500) is None  # taken
    renew = client.register_script(COMPARE_AND_EXPIRE)
    assert renew(keys=[key], args=["holder-b", 5000]) == 0  # not the holder: no renewal
    assert renew(keys=[key], args=["holder-a", 5000]) == 1
    assert 1000 < client.pttl(key) <= 5000
    client.pexpire(key, 50)
    deadline = time.monotonic() + 5
    while client.exists(key) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.set(key, "holder-b", nx=True, px=500) is True  # expired: free again
    assert client.incr(f"smoke:epoch:{unique}") == 1
    assert client.incr(f"smoke:epoch:{unique}") == 2

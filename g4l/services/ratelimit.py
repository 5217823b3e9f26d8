"""A sliding-window rate limit on generation requests, shared by every web node.

A fixed per-minute counter lets a client send twice the limit across a minute boundary
(the limit at :59, again at :00); a log of request times over the last window does not.
Refused requests are not logged, so flooding does not extend the wait.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import redis

from g4l import keys

# KEYS[1]=log; ARGV: now, window, limit, member -> {1, 0} allowed | {0, oldest score}
_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, oldest[2]}
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 1)
return {1, '0'}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: int  # whole seconds until a request would be allowed (0 when allowed)


class RateLimiter:
    """At most ``limit`` requests per ``window`` seconds per client key."""

    def __init__(self, r: redis.Redis, window: float = 60.0) -> None:
        self.r = r
        self.window = window
        self._take = r.register_script(_TAKE)

    def take(self, client: str, limit: int) -> Decision:
        """Count one request of ``client`` if it is within ``limit``."""
        now = time.time()
        allowed, oldest = self._take(keys=[keys.rate_log(client)],
                                     args=[f"{now:.6f}", self.window, limit, f"{now:.6f}-{uuid.uuid4().hex[:8]}"])
        if int(allowed):
            return Decision(True, 0)
        wait = float(oldest) + self.window - now
        return Decision(False, max(1, int(wait) + 1))

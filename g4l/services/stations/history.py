"""A station's buffer over time, for the operator's dashboard plot.

The packager that drives a station samples its buffer (seconds ahead of the listeners and
the health state) at most every ``G4L_STATION_HISTORY_EVERY_S`` into a Redis sorted set
(:func:`g4l.keys.station_history`, scored by wall time), trimmed to the last
``G4L_STATION_HISTORY_HOURS``: 24 h at 10 s is 8640 samples, about 300 KB. It lives in
Redis, so it survives restarts of every process; it expires with the station once the
station stops (:meth:`StationHistory.keep_for`), and on its own a while after the last
sample should a station vanish without being stopped.
"""

from __future__ import annotations

import math
import time
from typing import Any

from g4l import keys
from g4l.context import Context

#: A key nobody writes to any more expires this long after its window.
_SPARE_TTL_S = 3600

# KEYS[1]=history; ARGV: now, every_s, window_s, member -> 1 stored | 0 too soon.
# The spacing is checked in Redis, so two packagers (or one restarted) never crowd it.
_RECORD = """
local now = tonumber(ARGV[1])
local last = redis.call('ZREVRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if last[2] then
  local since = now - tonumber(last[2])
  if since >= 0 and since < tonumber(ARGV[2]) then return 0 end
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[3])))
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3])) + tonumber(ARGV[5]))
return 1
"""


class StationHistory:
    """Record and read a station's buffer samples ``{t, buffered_s, state}``.

    One instance per driver: it also skips Redis between two samples it knows are too
    close (the packager ticks every half second).
    """

    def __init__(self, ctx: Context) -> None:
        self.r = ctx.redis
        self.every_s = max(0.1, float(ctx.settings.station_history_every_s))
        self.window_s = max(self.every_s, float(ctx.settings.station_history_hours) * 3600.0)
        self._record = ctx.redis.register_script(_RECORD)
        self._next_at: dict[str, float] = {}

    def record(self, station_id: str, buffered_s: float, state: str, now: float | None = None) -> bool:
        """Add a sample unless the last one is under ``every_s`` old; whether it was added."""
        now = time.time() if now is None else now
        if now < self._next_at.get(station_id, -math.inf):
            return False
        member = f"{now:.3f}|{max(0.0, buffered_s):.2f}|{state}"
        added = bool(self._record(keys=[keys.station_history(station_id)],
                                  args=[f"{now:.3f}", self.every_s, self.window_s, member, _SPARE_TTL_S]))
        if added:
            self._next_at[station_id] = now + self.every_s
        return added

    def read(self, station_id: str, since: float | None = None) -> list[dict[str, Any]]:
        """The samples kept, oldest first; only those after ``since`` (epoch s) when given."""
        low = "-inf" if since is None else f"({since:.3f}"
        found = []
        for member in self.r.zrangebyscore(keys.station_history(station_id), low, "+inf"):
            t, buffered, state = (member.split("|", 2) + ["", ""])[:3]
            try:
                found.append({"t": float(t), "buffered_s": float(buffered), "state": state})
            except ValueError:  # not a sample of ours: skip it rather than fail the page
                continue
        return found

    def keep_for(self, station_id: str, seconds: int) -> None:
        """The station stopped: its samples expire with its record."""
        self.r.expire(keys.station_history(station_id), max(1, int(seconds)))

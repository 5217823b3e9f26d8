"""Riding out a Redis outage (a restart, a pause) instead of failing what is in flight.

Redis holds sessions, the queue and the notices: while it is away nothing can progress,
but a worker in the middle of a generation should finish it and hand the result over once
Redis is back, within a bound, rather than fail the job; an idle process should wait,
not crash into a restart loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import redis

from g4l.log import get_logger

log = get_logger(__name__)

T = TypeVar("T")
#: Errors that mean "Redis is not reachable right now" (not a bad command).
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


def backoff(attempt: int, first_s: float = 0.25, most_s: float = 5.0) -> float:
    """Seconds to wait before attempt ``attempt`` (0-based): doubling, capped."""
    return min(most_s, first_s * (2 ** min(attempt, 16)))


def retry(fn: Callable[[], T], *, wait_s: float, what: str, **context: object) -> T:
    """``fn()``, retried with backoff while Redis is unavailable, for up to ``wait_s``
    seconds (then the last error is raised). ``wait_s`` <= 0: wait as long as it takes."""
    deadline = time.monotonic() + wait_s
    attempt = 0
    while True:
        try:
            return fn()
        except UNAVAILABLE as exc:
            if wait_s > 0 and time.monotonic() >= deadline:
                raise
            if attempt == 0:
                log.warning("redis unavailable; waiting for it", waiting_for=what, error=str(exc)[:200], **context)
            time.sleep(backoff(attempt))
            attempt += 1

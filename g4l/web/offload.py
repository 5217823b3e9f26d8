"""Run CPU-bound calls (base64, WAV decode/encode, resampling) in real OS threads, so the
gevent hub keeps serving every other socket meanwhile."""

from __future__ import annotations

from typing import Any, Callable

import gevent


def offload(fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn(*args)`` in gevent's native thread pool and wait cooperatively."""
    return gevent.get_hub().threadpool.apply(fn, args)

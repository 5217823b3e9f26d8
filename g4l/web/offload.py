"""Run CPU-bound calls (base64, WAV decode/encode, resampling) in real OS threads, so the
gevent hub keeps serving every other socket meanwhile."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
import soundfile
from gevent import monkey

# soundfile serialises libsndfile's error handling with a class-level threading.Lock. In a
# monkey-patched process that is a gevent lock, and native pool threads contending on it
# deadlock (seen under a flood of uploads). Only pool threads call soundfile here, so a
# real OS lock is the right one.
soundfile.SoundFile._sf_error_lock = monkey.get_original("_thread", "allocate_lock")()


def offload(fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn(*args)`` in gevent's native thread pool and wait cooperatively.

    ``fn`` must not use gevent-patched primitives (locks, sockets): it runs on another OS
    thread, outside this hub.
    """
    return gevent.get_hub().threadpool.apply(fn, args)

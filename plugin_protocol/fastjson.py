"""A ``json``-module stand-in for python-socketio that encodes with orjson.

Socket.IO packets carrying audio are 10-100 MB of JSON; the standard library encodes
such a packet in about 0.4 s (on the event loop, for a server), orjson in about 0.1 s.
Decoding stays with the standard library: it is as fast here and accepts what clients
send (validation rejects NaN and friends afterwards, with a clear message).
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson


def _has_non_finite(obj: Any) -> bool:
    # orjson writes NaN/Infinity as null; the standard library writes NaN, which is what
    # was asked for (and what a server must then refuse), so such payloads go that way.
    if isinstance(obj, float):
        return not math.isfinite(obj)
    if isinstance(obj, dict):
        return any(_has_non_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_has_non_finite(v) for v in obj)
    return False


def dumps(obj: Any, **_kwargs: Any) -> str:
    """Compact JSON text (python-socketio passes ``separators``; orjson is compact)."""
    if _has_non_finite(obj):
        return json.dumps(obj, separators=(",", ":"))
    try:
        return orjson.dumps(obj).decode("utf-8")
    except TypeError:  # a type orjson does not know (e.g. an int beyond 64 bits)
        return json.dumps(obj, separators=(",", ":"))


def loads(text: str | bytes, **kwargs: Any) -> Any:
    return json.loads(text, **kwargs)

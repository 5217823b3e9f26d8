"""Heartbeats: a process publishes itself in an expiring Redis key and a set of names;
readers list the ones still beating (workers, web nodes)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import redis


def publish(r: redis.Redis, names_key: str, beat_key: Callable[[str], str], name: str, info: dict[str, Any],
            ttl_s: float) -> None:
    """Write ``name``'s heartbeat (``info`` as JSON, expiring after ``ttl_s``) and list it."""
    with r.pipeline() as p:
        p.set(beat_key(name), json.dumps(info), px=int(ttl_s * 1000))
        p.sadd(names_key, name)
        p.execute()


def withdraw(r: redis.Redis, names_key: str, beat_key: Callable[[str], str], name: str) -> None:
    """Remove ``name``'s heartbeat at once (a clean stop), rather than let it expire."""
    with r.pipeline() as p:
        p.delete(beat_key(name))
        p.srem(names_key, name)
        p.execute()


def alive(r: redis.Redis, names_key: str, beat_key: Callable[[str], str]) -> dict[str, str]:
    """Name -> heartbeat JSON of every member of ``names_key`` whose key
    ``beat_key(name)`` has not expired; the expired ones are dropped from the set."""
    names = sorted(r.smembers(names_key))
    if not names:
        return {}
    beats = r.mget([beat_key(n) for n in names])
    dead = [n for n, b in zip(names, beats, strict=True) if b is None]
    if dead:
        r.srem(names_key, *dead)
    return {n: b for n, b in zip(names, beats, strict=True) if b is not None}

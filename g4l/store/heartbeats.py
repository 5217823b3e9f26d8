"""Heartbeats: a process publishes itself in an expiring Redis key and a set of names;
readers list the ones still beating (workers, web nodes)."""

from __future__ import annotations

from collections.abc import Callable

import redis


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

"""Genre streams (the generative HLS daemon's ``get_stream``): a station per genre and
parameters, shared by every request that asks for the same ones.

That API's ``temperature`` is a level on its own 0-10 scale where 3 is the usual setting;
it maps linearly onto MusicGen's sampling temperature, 3 -> 1.0 (MusicGen's default),
each level 0.2 more or less: 0 -> 0.4 (tame, repetitive), 10 -> 2.4 (wild). ``adaptive``
lets the station drift: its prompt rotates through moods of the genre every
``G4L_GENRE_ROTATE_S`` seconds of music; without it one prompt plays on. ``manual`` is
accepted (and part of the reuse key) but changes nothing here: there is no manual control
surface to hand over.

The same owner, genre (case and spacing ignored), level, flags and model give the same
station while it runs; a stopped one is replaced by a new one on the next request.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import gevent

from g4l import keys
from g4l.context import Context
from g4l.errors import Busy, InvalidRequest, StationNotFound
from g4l.log import get_logger
from g4l.services.auth import Caller
from g4l.services.prompts import build_prompt
from g4l.services.stations.service import StationService

log = get_logger(__name__)

LEVEL_MIN, LEVEL_MAX, LEVEL_DEFAULT = 0.0, 10.0, 3.0
#: The moods an adaptive station rotates through (after the plain genre).
ADAPTIVE_MOODS = ("energetic", "calm", "dark", "uplifting")
_CREATE_LOCK_S = 15


def temperature_for_level(level: float) -> float:
    """MusicGen's sampling temperature for a level of the get_stream scale (see the module
    docstring). :raises InvalidRequest: outside 0-10."""
    if not LEVEL_MIN <= level <= LEVEL_MAX:
        raise InvalidRequest(f"temperature must be between {LEVEL_MIN:g} and {LEVEL_MAX:g} (3 is the usual level)")
    return round(0.4 + 0.2 * level, 3)


def prompts_for(genre: str, adaptive: bool) -> list[str]:
    """The station's prompt, or its rotation of moods when adaptive."""
    base = build_prompt(genre=genre).structured_prompt
    if not adaptive:
        return [base]
    return [base] + [build_prompt(genre=genre, mood=mood).structured_prompt for mood in ADAPTIVE_MOODS]


class GenreStreams:
    """Find or start the station of a genre."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.stations = StationService(ctx)

    def get_stream(self, caller: Caller, *, genre: str, level: float = LEVEL_DEFAULT, adaptive: bool = False,
                   manual: bool = False, model: str | None = None) -> dict[str, Any]:
        """The running station for these parameters, started if there is none.

        :returns: the station's status (:meth:`StationService.get`) plus ``reused`` and
            ``temperature`` (the sampling temperature the level maps to).
        :raises InvalidRequest: an empty genre or a level outside 0-10.
        :raises StationsFull: a new station was needed and no slot is free.
        """
        genre = " ".join((genre or "").split())
        if not genre:
            raise InvalidRequest("params.genre is empty: name a genre (e.g. rock)")
        temperature = temperature_for_level(level)
        model = self.stations.specs.model(model)
        digest = hashlib.sha256(json.dumps([genre.lower(), level, adaptive, manual, model]).encode()).hexdigest()[:32]
        key = keys.genre_stream(caller.owner or "", digest)
        lock = key + ":lock"
        r = self.ctx.redis
        for _ in range(int(_CREATE_LOCK_S / 0.1)):
            found = self._running(r.get(key), caller)
            if found is not None:
                r.expire(key, self.ctx.settings.retention_seconds)  # it lives as long as it is asked for
                return {**found, "reused": True}
            if r.set(lock, "1", nx=True, ex=_CREATE_LOCK_S):
                break
            gevent.sleep(0.1)  # another request is starting this very station
        else:
            raise Busy("this stream is being started by another request; ask again in a moment")
        try:
            found = self._running(r.get(key), caller)
            if found is not None:
                return {**found, "reused": True}
            created = self.stations.create(caller, prompts=prompts_for(genre, adaptive), model=model,
                                           temperature=temperature,
                                           rotate_every_s=self.ctx.settings.genre_rotate_s if adaptive else 0.0)
            r.set(key, created["station_id"], ex=self.ctx.settings.retention_seconds)
            log.info("genre stream started", station_id=created["station_id"], genre=genre[:60], level=level,
                     temperature=temperature, adaptive=adaptive)
            return {**self.stations.get(created["station_id"], caller), "reused": False}
        finally:
            r.delete(lock)

    def _running(self, station_id: str | None, caller: Caller) -> dict[str, Any] | None:
        if not station_id:
            return None
        try:
            status = self.stations.get(station_id, caller)
        except StationNotFound:
            return None
        return status if status.get("status") == "running" else None

"""Stopping live streams nobody listens to (and whose session makes no new audio): the
packager does it on its own every few seconds, an operator on request."""

from __future__ import annotations

from g4l import keys
from g4l.context import Context
from g4l.errors import StationNotFound
from g4l.log import get_logger
from g4l.services.auth import Caller
from g4l.services.listen import ONESHOT, STATION, ListenService
from g4l.services.stations.service import StationService

log = get_logger(__name__)

#: A one-shot stream whose generation ended stops after this long without a listener (its
#: music has played; the result stays downloadable).
ONESHOT_LINGER_S = 120.0


def stop_idle(ctx: Context, max_idle_s: float | None = None) -> list[str]:
    """Stop every stream with no listener and no new audio for ``max_idle_s`` (default:
    the ``hls_idle_timeout_s`` setting). Stations stopped this way stop generating too;
    a station that pushes to an RTMP output or records is never idle (its audience is
    elsewhere). Returns the tokens stopped (their segments are deleted by the packager within a second)."""
    listen = ListenService(ctx)
    limit = ctx.settings.hls_idle_timeout_s if max_idle_s is None else max(0.0, float(max_idle_s))
    stopped: list[str] = []
    for token in sorted(ctx.redis.smembers(keys.STREAMS)):
        info = ctx.redis.hgetall(keys.listen(token))
        if not info:
            ctx.redis.srem(keys.STREAMS, token)
            continue
        own_limit = limit
        if info.get("kind") == ONESHOT and max_idle_s is None:
            job = ctx.jobs.get(info.get("ref", ""))
            if job is None or job.status.final:
                own_limit = min(limit, ONESHOT_LINGER_S)
        if listen.listeners(token) > 0 or listen.idle_seconds(token, info) < own_limit:
            continue
        if info.get("kind") == STATION and StationService(ctx).broadcasting(info.get("ref", "")):
            continue
        try:
            if info.get("kind") != STATION:
                raise StationNotFound("a session stream")
            StationService(ctx).stop(info.get("ref", ""), Caller.internal(), reason="idle")
        except StationNotFound:  # a session's stream, or a station already gone
            listen.stop(token, "idle")
        stopped.append(token)
    if stopped:
        log.info("idle streams stopped", count=len(stopped), max_idle_s=limit)
    return stopped

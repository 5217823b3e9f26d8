"""Listen links: read-only tokens that name a live HLS stream of a session or a station.

A listen token is a separate capability from the session id (``secrets.token_urlsafe``):
it opens ``/hls/<token>/index.m3u8`` and ``/listen/<token>`` and nothing else, so whoever
holds it can listen but never continue, crop or clean up the session. The stream's state
lives in one Redis hash per token (:func:`g4l.keys.listen`); the token set
:data:`g4l.keys.STREAMS` tells the packager process which streams to run.

Used by the web process (links, serving, status) and the packager; stopping idle streams
is :mod:`g4l.services.idle_streams`.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

from g4l import keys
from g4l.context import Context
from g4l.jobs.records import JobStatus
from g4l.log import get_logger
from g4l.store.sessions import Session
from g4l.store.stations import StationStore

log = get_logger(__name__)

SESSION = "session"
STATION = "station"
#: One generation job's audio, played once (the realtime API, :mod:`g4l.services.oneshot`).
ONESHOT = "job"
#: ``secrets.token_urlsafe(24)``: 32 characters of [A-Za-z0-9_-], 192 random bits.
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{32}$")
#: A player that fetched the playlist this recently counts as a listener.
LISTENER_WINDOW_S = 20.0


def new_token() -> str:
    """A fresh unguessable listen token."""
    return secrets.token_urlsafe(24)


def valid_token(token: str) -> bool:
    """Whether ``token`` has the shape of a listen token (checked before any lookup)."""
    return bool(TOKEN_RE.match(token or ""))


def links(token: str) -> dict[str, str]:
    """The relative URLs of a stream: playlist for any HLS player, page for browsers."""
    return {"playlist_url": f"/hls/{token}/index.m3u8", "page_url": f"/listen/{token}"}


def buffer_health(buffered_s: float, low_s: float, started: bool) -> str:
    """``ok`` / ``low`` / ``empty`` (nothing queued: silence plays) / ``starting``."""
    if not started:
        return "starting"
    if buffered_s <= 0.05:
        return "empty"
    return "low" if buffered_s < low_s else "ok"


class ListenService:
    """Create, resolve, count and clean up live streams."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.r = ctx.redis
        self.stations = StationStore(ctx.redis)

    # ------------------------------------------------------------ links
    def session_link(self, session: Session) -> dict[str, str]:
        """The listen link of a session (the same one every time), starting its stream.
        The caller has checked the session is the asker's (``SessionService.require``)."""
        session_id = session.id
        token = session.get("listen_token") or ""
        if not valid_token(token):
            token = new_token()
            self.ctx.sessions.update(session_id, listen_token=token)
        self.open_stream(token, SESSION, session_id)
        log.info("listen link issued", session_id=session_id, stream=token[:8])
        return {**links(token), "session_id": session_id}

    def open_stream(self, token: str, kind: str, ref: str) -> None:
        """Register (or re-open) the stream of ``token``; the packager starts it."""
        key = keys.listen(token)
        now = time.time()
        with self.r.pipeline() as p:
            p.hsetnx(key, "created", now)
            p.hset(key, mapping={"kind": kind, "ref": ref, "last_access": now, "stopped": ""})
            p.hsetnx(key, "state", "starting")
            p.expire(key, self.ctx.settings.retention_seconds)
            p.sadd(keys.STREAMS, token)
            p.execute()
        if self.r.hget(key, "state") == "stopped":
            self.r.hset(key, "state", "starting")

    def resolve(self, token: str) -> dict[str, str] | None:
        """The stream a token names, or None (malformed, unknown or stopped)."""
        if not valid_token(token):
            return None
        info = self.r.hgetall(keys.listen(token))
        if not info or info.get("state") == "stopped":
            return None
        return info

    # ------------------------------------------------------------ listeners
    def touch(self, token: str, listener: str) -> None:
        """A player fetched the playlist: the stream has a listener and is active."""
        now = time.time()
        with self.r.pipeline() as p:
            p.hset(keys.listen(token), "last_access", now)
            p.zadd(keys.listeners(token), {listener[:200]: now})
            p.zremrangebyscore(keys.listeners(token), "-inf", now - LISTENER_WINDOW_S)
            p.expire(keys.listeners(token), int(LISTENER_WINDOW_S * 3))
            p.execute()

    def listeners(self, token: str) -> int:
        """How many distinct players fetched the playlist in the last few seconds."""
        return int(self.r.zcount(keys.listeners(token), time.time() - LISTENER_WINDOW_S, "+inf"))

    # ------------------------------------------------------------ status
    def status(self, token: str) -> dict[str, Any] | None:
        """What the listen page shows: what the session/station is doing and the buffer."""
        info = self.resolve(token)
        if info is None:
            return None
        kind, ref = info.get("kind", ""), info.get("ref", "")
        buffered = float(info.get("buffered_s") or 0)
        out: dict[str, Any] = {
            "kind": kind, "state": info.get("state") or "starting", "buffered_s": buffered,
            "buffer_health": info.get("buffer_health") or "starting",
            "listeners": self.listeners(token), "underruns": int(info.get("underruns") or 0),
            "generating": False, "progress": 0, "current_prompt": info.get("playing_prompt") or None,
        }
        if kind == SESSION:
            session = self.ctx.sessions.get(ref)
            out["session_state"] = session.status if session else "ended"
            out["generating"] = bool(session and session.busy)
            out["progress"] = session.progress if session and session.busy else 0
        elif kind == ONESHOT:
            job = self.ctx.jobs.get(ref)
            out["job_state"] = job.status.value if job else "expired"
            out["generating"] = bool(job and job.status.pending)
            out["progress"] = job.progress if job and job.status is JobStatus.RUNNING else 0
        else:
            station = self.stations.fields(ref, "job_id", "status", "generating_prompt")
            job = self.ctx.jobs.get(station["job_id"]) if station["job_id"] else None
            out["station_state"] = station["status"] or "stopped"
            out["generating"] = bool(job and job.status.pending)
            out["progress"] = job.progress if job and job.status is JobStatus.RUNNING else 0
            out["current_prompt"] = out["current_prompt"] or station["generating_prompt"] or None
        return out

    # ------------------------------------------------------------ stop and cleanup
    def stop(self, token: str, reason: str) -> None:
        """Stop a stream: the packager stops encoding and deletes its segments."""
        with self.r.pipeline() as p:
            p.srem(keys.STREAMS, token)
            p.hset(keys.listen(token), mapping={"state": "stopped", "stopped": reason, "buffered_s": 0})
            p.delete(keys.listeners(token))
            p.execute()
        log.info("stream stop requested", stream=token[:8], reason=reason)

    def idle_seconds(self, token: str, info: dict[str, str] | None = None) -> float:
        """Seconds since the stream last had a listener or (a session stream) new audio.

        A station's own generations do not count: a station nobody hears should stop."""
        info = info if info is not None else self.r.hgetall(keys.listen(token))
        fields = ["created", "last_access"] + (["last_audio"] if info.get("kind") in (SESSION, ONESHOT) else [])
        last = max(float(info.get(k) or 0) for k in fields)
        return time.time() - last

"""Session state in Redis: one hash a session, expiring after the retention period.

A session is busy while it has a job queued or running; taking it busy is one atomic
Lua call, so two requests racing on the same session cannot both start a job.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import redis

from g4l import keys
from g4l.errors import Busy, SessionNotFound

#: A session's status mirrors its current job's while it has one (the Lua below checks
#: the same two words); "idle" otherwise. The store sits below the job layer, so the
#: words are written here rather than imported from ``JobStatus``.
BUSY_STATES = ("queued", "running")

# KEYS[1]=session; ARGV: job_id, now, ttl -> OK | NOT_FOUND | BUSY
_BEGIN_JOB = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'NOT_FOUND' end
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'queued' or st == 'running' then return 'BUSY' end
redis.call('HSET', KEYS[1], 'status', 'queued', 'job_id', ARGV[1], 'progress', '0',
           'error', '', 'error_code', '', 'updated', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 'OK'
"""

# KEYS[1]=session; ARGV: job_id, ttl, field, value, ... -> 1 if applied, 0 if the job is stale
_UPDATE_IF_JOB = """
if redis.call('HGET', KEYS[1], 'job_id') ~= ARGV[1] then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


def format_field(sample_rate: int, channels: int, subtype: str) -> str:
    """The ``current_format`` field: how the session's current audio is shaped."""
    return f"{sample_rate},{channels},{subtype}"


def parse_format(value: str | None) -> tuple[int, int, str] | None:
    if not value:
        return None
    rate, channels, subtype = value.split(",", 2)
    return int(rate), int(channels), subtype


def new_session_id() -> str:
    """Session ids are unguessable capabilities."""
    return str(uuid.uuid4())


def _encode(fields: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in fields.items():
        if value is None:
            out[key] = ""
        elif isinstance(value, bool):
            out[key] = "1" if value else "0"
        else:
            out[key] = str(value)
    return out


class Session(dict):
    """A session's fields (all strings in Redis), with typed accessors."""

    @property
    def id(self) -> str:
        return self["id"]

    @property
    def status(self) -> str:
        return self.get("status") or "idle"

    @property
    def busy(self) -> bool:
        return self.status in BUSY_STATES

    @property
    def progress(self) -> int:
        return int(float(self.get("progress") or 0))

    @property
    def version(self) -> int:
        return int(self.get("version") or 0)

    def text(self, key: str) -> str | None:
        """A string field, ``None`` when empty."""
        return self.get(key) or None

    def integer(self, key: str) -> int | None:
        """An integer field (exact: a seed may exceed what a float holds), ``None`` when empty."""
        value = self.get(key)
        return int(value) if value not in (None, "") else None

    def number(self, key: str, cast: type = float) -> Any:
        value = self.get(key)
        return cast(float(value)) if value not in (None, "") else None


class SessionStore:
    """CRUD and atomic state transitions of sessions."""

    def __init__(self, r: redis.Redis, ttl_seconds: int) -> None:
        self.r = r
        self.ttl = ttl_seconds
        self._begin = r.register_script(_BEGIN_JOB)
        self._update_if_job = r.register_script(_UPDATE_IF_JOB)

    def create(self, session_id: str | None = None, **fields: Any) -> Session:
        """Create a new idle session (or a queued one, with ``status``/``job_id`` given)."""
        session_id = session_id or new_session_id()
        now = time.time()
        data = {"id": session_id, "status": "idle", "progress": 0, "version": 0,
                "created": now, "updated": now, **fields}
        key = keys.session(session_id)
        with self.r.pipeline() as p:
            p.hset(key, mapping=_encode(data))
            p.expire(key, self.ttl)
            p.execute()
        return Session(_encode(data))

    def get(self, session_id: str) -> Session | None:
        data = self.r.hgetall(keys.session(session_id))
        return Session(data) if data else None

    def require(self, session_id: str) -> Session:
        """The session, or :class:`SessionNotFound`."""
        session = self.get(session_id)
        if session is None:
            raise SessionNotFound(f"no session {session_id} (it ended or expired)", session_id=session_id)
        return session

    def update(self, session_id: str, **fields: Any) -> None:
        key = keys.session(session_id)
        with self.r.pipeline() as p:
            p.hset(key, mapping=_encode({**fields, "updated": time.time()}))
            p.expire(key, self.ttl)
            p.execute()

    def update_if_job(self, session_id: str, job_id: str, **fields: Any) -> bool:
        """Apply ``fields`` only if the session's current job is still ``job_id``."""
        flat: list[str] = []
        for k, v in _encode({**fields, "updated": time.time()}).items():
            flat += [k, v]
        return bool(self._update_if_job(keys=[keys.session(session_id)], args=[job_id, self.ttl, *flat]))

    def begin_job(self, session_id: str, job_id: str) -> None:
        """Mark the session queued for ``job_id``; :class:`Busy` if it already has one."""
        result = self._begin(keys=[keys.session(session_id)], args=[job_id, time.time(), self.ttl])
        if result == "NOT_FOUND":
            raise SessionNotFound(f"no session {session_id} (it ended or expired)", session_id=session_id)
        if result == "BUSY":
            raise Busy("Generation already in progress", session_id=session_id)

    def delete(self, session_id: str) -> bool:
        return bool(self.r.delete(keys.session(session_id)))

    def live_ids(self) -> set[str]:
        """Ids of every session Redis still holds (for the retention sweep)."""
        prefix = keys.session("")
        return {k[len(prefix):] for k in self.r.scan_iter(match=prefix + "*", count=1000) if k.count(":") == 2}

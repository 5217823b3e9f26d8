"""Session state in Redis: one hash a session, and its history beside it, both expiring
after the retention period. :class:`SessionStore` alone reads and writes them.

A session is busy while it has a job queued or running; taking it busy is one atomic
Lua call, so two requests racing on the same session cannot both start a job. Every
change of its audio appends a version to its history (:mod:`g4l.store.history`), in the
same atomic call that moves its current pointer.
"""

from __future__ import annotations

import time
import uuid
from enum import StrEnum
from typing import Any

import redis

from g4l import keys
from g4l.errors import Busy, SessionNotFound
from g4l.store.history import History, HistoryScripts, VersionRecord


class SessionStatus(StrEnum):
    """A session's status: its current job's while it has one, idle otherwise. The store
    sits below the job layer, so these are its own words (the same as ``JobStatus``'s;
    the Lua scripts check the two busy ones)."""

    IDLE = "idle"
    QUEUED = "queued"
    RUNNING = "running"

    @property
    def busy(self) -> bool:
        return self is not SessionStatus.IDLE


BUSY_STATES = (SessionStatus.QUEUED.value, SessionStatus.RUNNING.value)

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
redis.call('EXPIRE', KEYS[2], ARGV[2])
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
    def status(self) -> SessionStatus:
        value = self.get("status") or ""
        return SessionStatus(value) if value in BUSY_STATES else SessionStatus.IDLE

    @property
    def busy(self) -> bool:
        return self.status.busy

    @property
    def progress(self) -> int:
        return int(float(self.get("progress") or 0))

    @property
    def version(self) -> int:
        """The current version's number (0: no audio yet)."""
        return int(self.get("version") or 0)

    @property
    def current_version(self) -> int | None:
        """The current version, or None while the session has no audio."""
        return self.version if self.get("current_blob") and self.version > 0 else None

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
    """CRUD, atomic state transitions and the history of sessions.

    :param history_max: versions whose audio a session keeps (:meth:`prune`)."""

    def __init__(self, r: redis.Redis, ttl_seconds: int, history_max: int = 50) -> None:
        self.r = r
        self.ttl = ttl_seconds
        self.history_max = history_max
        self._begin = r.register_script(_BEGIN_JOB)
        self._update_if_job = r.register_script(_UPDATE_IF_JOB)
        self._history = HistoryScripts(r, ttl_seconds)

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
            p.expire(keys.session_versions(session_id), self.ttl)  # the history lives as long
            p.execute()

    def update_if_job(self, session_id: str, job_id: str, **fields: Any) -> bool:
        """Apply ``fields`` only if the session's current job is still ``job_id``."""
        flat: list[str] = []
        for k, v in _encode({**fields, "updated": time.time()}).items():
            flat += [k, v]
        return bool(self._update_if_job(keys=[keys.session(session_id), keys.session_versions(session_id)],
                                        args=[job_id, self.ttl, *flat]))

    def begin_job(self, session_id: str, job_id: str) -> None:
        """Mark the session queued for ``job_id``; :class:`Busy` if it already has one."""
        result = self._begin(keys=[keys.session(session_id)], args=[job_id, time.time(), self.ttl])
        if result == "NOT_FOUND":
            raise SessionNotFound(f"no session {session_id} (it ended or expired)", session_id=session_id)
        if result == "BUSY":
            raise Busy("Generation already in progress", session_id=session_id)

    def delete(self, session_id: str) -> bool:
        """Forget the session and its history (their audio stays until the retention sweep)."""
        return bool(self.r.delete(keys.session(session_id), keys.session_versions(session_id)))

    # ------------------------------------------------------------ history
    def allocate_version(self, session_id: str) -> int:
        """A new, never reused version number for the session (0 when it is gone)."""
        return self._history.allocate(session_id)

    def append_version(self, session_id: str, record: VersionRecord, *, job_id: str | None = None,
                       **fields: Any) -> str:
        """Add ``record`` to the history and make it current (its blob and format become
        ``current_blob`` / ``current_format``), writing ``fields`` too, in one atomic call.

        :param job_id: a job's result: applied only while that job is the session's.
            Without it (a crop, an upload), refused while a job is queued or running.
        :returns: OK, NOT_FOUND, STALE (another job is the session's now) or BUSY.
        """
        flat: list[str] = []
        values = {"current_blob": record.blob, "current_format": record.format, **fields}
        for k, v in _encode(values).items():
            flat += [k, v]
        return self._history.append(session_id, record, flat, job_id)

    def move(self, session_id: str, mode: str, target: int | None = None) -> int:
        """Undo (``mode="undo"``), redo, or check out ``target`` (``mode="to"``); refused
        while a job runs. Returns the new current version.
        :raises ~g4l.store.history.MoveRefused:"""
        return self._history.move(session_id, mode, target)

    def withdraw_version(self, session_id: str, version: int) -> int:
        """Take back a version whose audio the store never took: it is listed as pruned, and
        a session pointing at it goes back to its parent. Returns the current version after."""
        return self._history.withdraw(session_id, version)

    def history(self, session_id: str) -> History:
        """The session's versions and its current one (a session written before histories
        existed gets its current audio as the root)."""
        return self._history.read(session_id)

    def prune(self, session_id: str) -> list[str]:
        """Apply the history bound: mark the oldest versions beyond ``history_max`` pruned
        (never the current one nor its nearest ancestors within the bound) and return the
        GridFS ids no kept version refers to any more (the caller deletes
        them; :func:`g4l.store.retention.prune_history`)."""
        marked = self._history.prune(session_id, self.history_max)
        if not marked:
            return []
        tree = self._history.read(session_id)
        kept = {b for r in tree.versions.values() if not r.pruned for b in (r.blob, r.input_blob) if b}
        gone = [tree.versions[v] for v in marked if v in tree.versions]
        return sorted({b for r in gone for b in (r.blob, r.input_blob) if b and b not in kept})

    def live_ids(self) -> set[str]:
        """Ids of every session Redis still holds (for the retention sweep)."""
        prefix = keys.session("")
        return {k[len(prefix):] for k in self.r.scan_iter(match=prefix + "*", count=1000) if k.count(":") == 2}

"""Undo, redo, checkout and the history view of a device session, whatever protocol
they arrive by (Socket.IO, ``/api/v1``, the CLI).

The tree itself lives in the session store (:mod:`g4l.store.history`); this service adds
the caller's access rule, the errors a client reads, and the audio of a version.

Undo, redo and checkout are refused while a job of the session is queued or running
(``BUSY``), rather than queued behind it: the job's result is made from the version that
was current when it was asked for, and becomes the new current version when it ends. An
undo applied before it would be undone by the result a moment later; one applied after
it would undo something the musician has not heard yet. Refusing says so at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from g4l import keys
from g4l.errors import (
    Busy,
    NothingToRedo,
    NothingToUndo,
    RateLimited,
    SessionNotFound,
    VersionNotFound,
    VersionPruned,
)
from g4l.jobs import delivery
from g4l.log import get_logger
from g4l.services.auth import Caller
from g4l.services.ratelimit import RateLimiter
from g4l.services.sessions import SessionService
from g4l.store.history import History, MoveRefused, Operation, VersionRecord

log = get_logger(__name__)

@dataclass(frozen=True)
class Moved:
    """The session after an undo, redo or checkout: its new current version."""

    session_id: str
    version: VersionRecord


class HistoryService:
    """The history operations of device sessions."""

    def __init__(self, sessions: SessionService) -> None:
        self.sessions = sessions
        self.ctx = sessions.ctx
        self._limiter = RateLimiter(sessions.ctx.redis)

    def history(self, session_id: str, caller: Caller) -> History:
        """The caller's session's versions and its current one."""
        self.sessions.require(session_id, caller)
        return self.ctx.sessions.history(session_id)

    def undo(self, session_id: str, caller: Caller) -> Moved:
        """Make the current version's parent current.
        :raises NothingToUndo: at a root. :raises Busy: a job of the session runs."""
        return self._move(session_id, caller, "undo")

    def redo(self, session_id: str, caller: Caller) -> Moved:
        """Make current the child the session was last on (after a new operation, the
        newest). :raises NothingToRedo: at a leaf. :raises Busy:"""
        return self._move(session_id, caller, "redo")

    def checkout(self, session_id: str, version: int, caller: Caller) -> Moved:
        """Make any kept version current (undo and redo then follow its branch).
        :raises VersionNotFound, VersionPruned, Busy:"""
        return self._move(session_id, caller, "to", version)

    def undo_transform(self, session_id: str, caller: Caller) -> Moved:
        """Restore the audio the last transform at or above the current version started
        from (also after continues on top of it: those stay in the history, on their
        branch). :raises NothingToUndo: no transform made the current audio."""
        self.sessions.require(session_id, caller)
        tree = self.ctx.sessions.history(session_id)
        last = tree.last_of(Operation.TRANSFORM)
        if last is None or last.parent is None:
            raise NothingToUndo("No previous audio found to undo to", session_id=session_id)
        return self._move(session_id, caller, "to", last.parent)

    def version(self, session_id: str, version: int, caller: Caller) -> VersionRecord:
        """One version's record. :raises VersionNotFound, VersionPruned:"""
        self.sessions.require(session_id, caller)
        record = self.ctx.sessions.history(session_id).versions.get(version)
        if record is None:
            raise VersionNotFound(f"session {session_id} has no version {version}", session_id=session_id)
        if record.pruned:
            raise self._pruned(session_id, version)
        return record

    def audio(self, record: VersionRecord, stored_wait_s: float = delivery.STORED_WAIT_S) -> bytes:
        """A version's WAV, byte for byte what the client received: the job's hand-off while
        GridFS is still storing it, else the stored file. :raises VersionNotFound: gone."""
        data = delivery.read_result(self.ctx, record.job_id, record.blob, held=self.sessions.held.get,
                                    offload=self.sessions.offload, stored_wait_s=stored_wait_s)
        if data is None:
            raise VersionNotFound(f"the audio of version {record.version} is gone (retention)")
        return bytes(data)

    # ------------------------------------------------------------ internals
    def _move(self, session_id: str, caller: Caller, mode: str, target: int | None = None) -> Moved:
        session = self.sessions.require(session_id, caller)
        self._check_rate(caller)
        before = session.current_version
        try:
            current = self.ctx.sessions.move(session_id, mode, target)
        except MoveRefused as refused:
            raise self._refusal(refused, session_id, mode, target) from None
        record = self.ctx.sessions.history(session_id).versions[current]
        if not self._readable(record):
            # Its file is gone (a lost write, the retention sweep): the session goes back to
            # where it was rather than pointing at audio nobody can get.
            if before is not None and before != current:
                try:
                    self.ctx.sessions.move(session_id, "to", before)
                except MoveRefused:
                    log.warning("could not move back", session_id=session_id, version=before)
            raise VersionNotFound(f"the audio of version {current} is gone; the session stays at version {before}",
                                  session_id=session_id)
        log.info("session version changed", session_id=session_id, operation=mode, version=current)
        return Moved(session_id, record)

    def _readable(self, record: VersionRecord) -> bool:
        """Whether the version's audio can be read: stored, or still in its job's hand-off."""
        if record.job_id and self.ctx.redis_bytes.exists(keys.result(record.job_id)):
            return True
        return self.ctx.blobs.info(record.blob) is not None

    def _check_rate(self, caller: Caller) -> None:
        """A flood of moves is refused: each one may send a whole take back."""
        limit = self.ctx.settings.history_moves_per_minute
        if limit <= 0:
            return
        decision = self._limiter.take(f"{caller.owner}:history", limit)
        if not decision.allowed:
            raise RateLimited(f"too many undo/redo/checkout requests: {limit} a minute; retry in "
                              f"{decision.retry_after} s", retry_after=decision.retry_after)

    def _pruned(self, session_id: str, version: int) -> VersionPruned:
        keep = self.ctx.sessions.history_max
        return VersionPruned(f"version {version} was pruned: a session keeps the audio of {keep} versions "
                             f"(G4L_HISTORY_MAX), the current one's line first", session_id=session_id)

    def _refusal(self, refused: MoveRefused, session_id: str, mode: str, target: int | None) -> Exception:
        state = refused.state
        if state == "BUSY":
            return Busy("Generation already in progress: undo, redo and checkout wait until it ends",
                        session_id=session_id)
        if state == "NOT_FOUND":
            return SessionNotFound(f"no session {session_id} (it ended or expired)", session_id=session_id)
        if state == "EMPTY":
            cls = NothingToUndo if mode == "undo" else NothingToRedo
            return cls(f"nothing to {mode}: this session has no audio yet", session_id=session_id)
        if state == "AT_ROOT":
            return NothingToUndo(f"nothing to undo: version {refused.current} is where this session's history "
                                 "begins", session_id=session_id)
        if state == "AT_LEAF":
            return NothingToRedo(f"nothing to redo: version {refused.current} is the newest on its branch",
                                 session_id=session_id)
        if state == "PRUNED":
            if mode == "redo":
                return NothingToRedo("nothing to redo: the newer version was pruned (G4L_HISTORY_MAX)",
                                     session_id=session_id)
            if mode == "undo":
                return NothingToUndo(f"nothing to undo: the versions before {refused.current} were pruned (a "
                                     f"session keeps its last {self.ctx.sessions.history_max}, G4L_HISTORY_MAX)",
                                     session_id=session_id)
            return self._pruned(session_id, target or 0)
        return VersionNotFound(f"session {session_id} has no version {target}", session_id=session_id)


def version_document(record: VersionRecord, children: list[int], current: int | None) -> dict[str, object]:
    """One version as every protocol shows it (no audio)."""
    return {"version": record.version, "parent": record.parent, "operation": record.operation.value,
            "created": round(record.created, 3), "duration": record.duration, "params": record.params,
            "children": children, "redo_to": record.redo_to, "pruned": record.pruned,
            "current": record.version == current}


def history_document(session_id: str, tree: History) -> dict[str, object]:
    """The session's tree as every protocol shows it: its versions oldest first."""
    return {"session_id": session_id, "current": tree.current,
            "versions": [version_document(tree.versions[v], tree.children(v), tree.current)
                         for v in sorted(tree.versions)]}

"""One snapshot of a device session: what every status answer, poll and reconnect shows.

``verify_session`` / ``request_progress_status`` (``session_status``), the ``/api/v1`` poll,
the JUCE plugin's poll and the Swift app's recovery route each format a
:class:`SessionSnapshot`; none of them reads the session's fields itself, so they cannot
disagree about whether a session is busy, what it holds, or what went wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from g4l.context import Context
from g4l.jobs.kinds import KindName
from g4l.jobs.records import JobStatus
from g4l.services.specs import SessionParams
from g4l.store.sessions import Session, SessionStatus


@dataclass(frozen=True)
class SessionSnapshot:
    """A session as one moment saw it (``exists`` false: unknown, or another key's).

    :param queue: the ``queue_status`` payload while a job waits or runs.
    :param canceled: the session's last job was canceled (its audio is what it was before).
    """

    session_id: str
    exists: bool
    status: SessionStatus = SessionStatus.IDLE
    progress: int = 0
    job_id: str | None = None
    queue_position: int | None = None
    queue: dict[str, Any] | None = None
    error: str | None = None
    error_code: str | None = None
    params: SessionParams | None = None
    version: int = 0
    seed: int | None = None
    has_audio: bool = False
    canceled: bool = False
    #: The kind of the job queued or running (``None`` while idle).
    job_kind: str | None = None  # a KindName's value
    #: The record it was taken from (to read its audio without a second look-up).
    session: Session | None = field(default=None, repr=False, compare=False)

    @property
    def busy(self) -> bool:
        return self.status.busy

    @property
    def transforming(self) -> bool:
        """A transform (terry) of the session is queued or running (the JUCE poll's
        ``transform_in_progress``)."""
        return self.busy and self.job_kind == KindName.TRANSFORM

    @property
    def model_name(self) -> str | None:
        return self.params.model if self.params else None

    def status_payload(self) -> dict[str, Any]:
        """The ``session_status`` event (and its acknowledgement)."""
        return {"session_id": self.session_id, "exists": self.exists,
                "status": self.status.value if self.exists else "missing", "generation_in_progress": self.busy,
                "progress": self.progress, "queue_position": self.queue_position, "error": self.error,
                "model_name": self.model_name, "version": self.version, "seed": self.seed}


def take(ctx: Context, session_id: str, session: Session | None,
         queue_status: Any = None) -> SessionSnapshot:
    """The snapshot of ``session`` (as found for the caller; None: missing).

    :param queue_status: ``queue_status(job_id, session_id)`` of the session service, called
        only while a job waits or runs.
    """
    if session is None:
        return SessionSnapshot(session_id, exists=False)
    job_id = session.get("job_id") or None
    raw = session.get("params")
    queue = queue_status(job_id, session_id) if session.busy and job_id and queue_status else None
    position = ctx.queue.position(job_id).position if session.status is SessionStatus.QUEUED and job_id else None
    canceled = False
    job_kind = None
    if session.busy and job_id:
        running = ctx.jobs.get(job_id)
        job_kind = running.kind if running is not None else None
    if not session.busy and job_id and not session.get("error"):
        canceled = ctx.jobs.status_of(job_id) is JobStatus.CANCELED
    return SessionSnapshot(
        session_id=session_id, exists=True, status=session.status, progress=session.progress, job_id=job_id,
        queue_position=position, queue=queue, error=session.text("error"), error_code=session.text("error_code"),
        params=SessionParams.model_validate_json(raw) if raw else None, version=session.version,
        seed=session.integer("seed"), has_audio=bool(session.get("current_blob")), canceled=canceled,
        job_kind=job_kind, session=session)


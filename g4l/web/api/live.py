"""Live progress for HTTP clients over Socket.IO.

* ``subscribe {job_id}``: the socket joins the job's room and receives ``job_update``
  (the job's JSON, as ``GET /api/v1/jobs/{id}``) on every change, then ``job_completed``
  (the same, with ``audio_url``) when it is done. It gets the current state at once.
* ``subscribe {session_id}``: the socket joins the session's room and receives exactly
  the device's events (``progress_update``, ``queue_status``, results, ``error``).
* ``unsubscribe`` takes the same payload.

Only the owner's sockets may subscribe when keys are configured; to others the job or
session does not exist (``error`` with ``NOT_FOUND`` / ``SESSION_NOT_FOUND``).
"""

from __future__ import annotations

from typing import Any

from flask import request
from flask_socketio import emit, join_room, leave_room

from g4l.errors import InvalidRequest
from g4l.jobs.queue import QueuePosition
from g4l.jobs.records import JobStatus
from g4l.log import get_logger
from g4l.services.jobs import JobService
from g4l.services.sessions import SessionService
from g4l.web.api.access import socket_caller
from g4l.web.api.jobs import job_status
from g4l.web.relay import Positions, Relay
from plugin_protocol import events
from plugin_protocol.normalize import as_object

log = get_logger(__name__)


def job_room(job_id: str) -> str:
    """The Socket.IO room of a job's subscribers (session rooms are bare session ids)."""
    return f"job:{job_id}"


class JobEvents:
    """Turns job notices into ``job_update`` / ``job_completed`` for subscribed sockets."""

    def __init__(self, relay: Relay, jobs: JobService) -> None:
        self.relay = relay
        self.jobs = jobs

    def on_notice(self, notice: dict[str, Any], positions: Positions | None) -> None:
        job_id = notice.get("job_id")
        if job_id and self.relay.has_local(job_room(job_id)):
            self.send(job_id)
        for waiting, position in (positions or {}).items():  # everyone behind moved up
            if waiting != job_id and self.relay.has_local(job_room(waiting)):
                self.send(waiting, position=position)

    def send(self, job_id: str, to_sid: str | None = None, position: QueuePosition | None = None) -> None:
        view = self.jobs.peek(job_id, position)
        if view is None:
            return
        payload = job_status(view).model_dump(mode="json")
        target = to_sid or job_room(job_id)
        self.relay.socketio.emit(events.JOB_UPDATE, payload, to=target)
        if view.job.status is JobStatus.COMPLETED:
            self.relay.socketio.emit(events.JOB_COMPLETED, payload, to=target)


class LiveEvents:
    """``subscribe`` / ``unsubscribe`` (a mixin of the namespace; see the module docstring)."""

    service: SessionService
    jobs: JobService
    job_events: JobEvents

    def on_subscribe(self, raw: Any = None, *_: Any) -> dict[str, Any]:
        job_id, session_id = _target(raw)
        caller = socket_caller()
        ack: dict[str, Any] = {}
        if job_id:
            self.jobs.get(caller, job_id)  # NotFound for unknown or foreign jobs
            join_room(job_room(job_id))
            ack["job_id"] = job_id
        if session_id:
            self.service.require(session_id, caller)
            join_room(session_id)
            ack["session_id"] = session_id
        emit(events.SUBSCRIBED, ack)
        if job_id:
            # Flask-SocketIO sets request.sid for every event.
            self.job_events.send(job_id, to_sid=request.sid)  # type: ignore[attr-defined]
        if session_id:
            emit(events.SESSION_STATUS, self.service.status(session_id, caller))
        return ack

    def on_unsubscribe(self, raw: Any = None, *_: Any) -> dict[str, Any]:
        job_id, session_id = _target(raw)
        if job_id:
            leave_room(job_room(job_id))
        if session_id:
            leave_room(session_id)
        return {"job_id": job_id, "session_id": session_id}


def _target(raw: Any) -> tuple[str | None, str | None]:
    data = as_object(raw)
    job_id, session_id = data.get("job_id"), data.get("session_id")
    for name, value in (("job_id", job_id), ("session_id", session_id)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise InvalidRequest(f"{name} must be a non-empty string")
    if not job_id and not session_id:
        raise InvalidRequest("send job_id or session_id")
    return (job_id.strip()[:64] if job_id else None), (session_id.strip()[:64] if session_id else None)

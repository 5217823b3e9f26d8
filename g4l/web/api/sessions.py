"""``/api/v1/sessions``: the HTTP twins of the device's Socket.IO operations.

Each route builds the same payload object the Socket.IO adapter parses and calls the same
:class:`~g4l.services.sessions.SessionService` method; only the reply's shape differs.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

from flask import Blueprint, Response
from pydantic import BaseModel, ValidationError

from g4l.errors import InvalidRequest, SessionNotFound
from g4l.jobs.records import JobStatus
from g4l.services.jobs import JobService
from g4l.services.sessions import Accepted, SessionService
from g4l.services.specs import PARAM_FIELDS
from g4l.web.api.access import http_caller
from g4l.web.api.download import DOWNLOAD_ERRORS, file_responses, send_result_wav
from g4l.web.api.models import (
    AudioBody,
    BangRequest,
    ContinueRequest,
    ImportBody,
    QueueStatus,
    RetryRequest,
    SessionAccepted,
    SessionLinks,
    SessionMessage,
    SessionParams,
    SessionPoll,
    SessionPollQuery,
)
from g4l.web.api.openapi import PREFIX
from g4l.web.api.routing import describe, operation
from plugin_protocol.payloads import ContinueMusicRequest, ProcessAudioRequest, RetryMusicRequest, UpdateCroppedAudio

_SESSION_ERRORS = (404, 409, 429, 503)
_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
T = TypeVar("T", bound=BaseModel)


def session_links(session_id: str, job_id: str | None = None) -> SessionLinks:
    base = f"{PREFIX}/sessions/{session_id}"
    return SessionLinks(self=base, audio=f"{base}/audio", job=f"{PREFIX}/jobs/{job_id}" if job_id else None)


def _checked(session_id: str) -> str:
    """A path id that cannot name a session is simply an unknown session."""
    if not _SESSION_ID.match(session_id):
        raise SessionNotFound(f"no session {session_id[:64]} (it ended or expired)")
    return session_id


def _payload(model: type[T], data: dict[str, Any]) -> T:
    """The device payload object the service takes (the HTTP model already checked the values)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(describe(exc)) from None


def _params(body: SessionParams) -> dict[str, Any]:
    return {k: getattr(body, k) for k in (*PARAM_FIELDS, "seed", "duration") if getattr(body, k) is not None}


def blueprint(service: SessionService, jobs: JobService) -> Blueprint:
    bp = Blueprint("api_sessions", __name__, url_prefix=PREFIX)

    def accepted(result: Accepted) -> tuple[SessionAccepted, int]:
        qs = QueueStatus(**service.queue_status(result.job_id, result.session_id))
        return SessionAccepted(session_id=result.session_id, job_id=result.job_id, kind=result.kind,
                               status=JobStatus.QUEUED, seed=result.seed, queue_status=qs,
                               links=session_links(result.session_id, result.job_id)), 202

    @bp.post("/sessions/bang")
    @operation("bangSession", "Bang: a new session continuing the FIRST prompt_duration seconds",
               tags=["sessions"], body=BangRequest, responses={202: SessionAccepted}, errors=(429, 503),
               audio=True)
    def bang(body: BangRequest) -> Any:
        """Twin of `process_audio_request`. The result is 30 s; poll the session."""
        given = _params(body)
        # The device payload names both; the resolver fills what the HTTP body left out.
        given.setdefault("model_name", service.specs.model(None))
        given.setdefault("prompt_duration", service.specs.prompt_seconds(None))
        req = _payload(ProcessAudioRequest, {**given, "audio_data": body.audio_data})
        return accepted(service.bang(req, http_caller()))

    @bp.post("/sessions")
    @operation("createSession", "A new session holding the given audio (no generation)", tags=["sessions"],
               body=AudioBody, responses={201: SessionMessage}, errors=(429,), audio=True)
    def create(body: AudioBody) -> Any:
        """Twin of `update_cropped_audio` without a session id: continue it next."""
        session_id = service.crop(UpdateCroppedAudio(audio_data=body.audio_data), http_caller())
        return SessionMessage(message="Session created", session_id=session_id,
                              links=session_links(session_id)), 201

    @bp.post("/sessions/import")
    @operation("importJobAsSession", "A new session holding a finished text-to-audio job's result",
               tags=["sessions"], body=ImportBody, responses={201: SessionMessage}, errors=(404, 409))
    def import_new(body: ImportBody) -> Any:
        """The job's WAV becomes version 1 of a new session (operation `generate`, with the job's parameters): continue
        it next. 409 `NOT_READY` for a job that is not a completed generate or text_to_audio job."""
        sid = service.import_job(None, body.job_id, http_caller())
        return SessionMessage(message="Session created", session_id=sid, links=session_links(sid)), 201

    @bp.post("/sessions/<session_id>/import")
    @operation("importJob", "Make a finished text-to-audio job's result the session's current audio",
               tags=["sessions"], body=ImportBody, responses={200: SessionMessage}, errors=(404, 409, 429))
    def import_into(session_id: str, body: ImportBody) -> Any:
        """A new version of the session (operation `generate`), made from its current one: undo returns to what was
        there. 409 `BUSY` while a generation of the session runs."""
        sid = service.import_job(_checked(session_id), body.job_id, http_caller())
        return SessionMessage(message="Job audio imported", session_id=sid, links=session_links(sid))

    @bp.get("/sessions/<session_id>")
    @operation("pollSession", "Poll a session (the upstream poll route)", tags=["sessions"],
               query=SessionPollQuery, responses={200: SessionPoll})
    def poll(session_id: str, query: SessionPollQuery) -> Any:
        data = jobs.session_poll(http_caller(), _checked(session_id), include_audio=query.include_audio)
        return SessionPoll(**data, links=session_links(session_id, data["job_id"]))

    @bp.post("/sessions/<session_id>/continue")
    @operation("continueSession", "Continue the LAST prompt_duration seconds", tags=["sessions"],
               body=ContinueRequest, responses={202: SessionAccepted}, errors=_SESSION_ERRORS, audio=True)
    def continue_(session_id: str, body: ContinueRequest) -> Any:
        """Twin of `continue_music_request`; without `audio_data` the session's current audio is continued."""
        req = _payload(ContinueMusicRequest, {**_params(body), "session_id": _checked(session_id),
                                               "audio_data": body.audio_data})
        return accepted(service.continue_(req, http_caller()))

    @bp.post("/sessions/<session_id>/retry")
    @operation("retrySession", "Redo the last continue from the input it used", tags=["sessions"],
               body=RetryRequest, responses={202: SessionAccepted}, errors=_SESSION_ERRORS)
    def retry(session_id: str, body: RetryRequest) -> Any:
        """Twin of `retry_music_request`. Send `{}` to keep the session's parameters."""
        req = _payload(RetryMusicRequest, {**_params(body), "session_id": _checked(session_id)})
        return accepted(service.retry(req, http_caller()))

    @bp.post("/sessions/<session_id>/crop")
    @operation("cropSession", "Replace the session's current audio (the client trimmed it)", tags=["sessions"],
               body=AudioBody, responses={200: SessionMessage}, errors=(404, 409), audio=True)
    def crop(session_id: str, body: AudioBody) -> Any:
        """Twin of `update_cropped_audio`."""
        sid = service.crop(_payload(UpdateCroppedAudio, {"session_id": _checked(session_id),
                                                    "audio_data": body.audio_data}), http_caller())
        return SessionMessage(message="Cropped audio updated", session_id=sid, links=session_links(sid))

    @bp.delete("/sessions/<session_id>")
    @operation("cleanupSession", "Free the session (cancels its job)", tags=["sessions"],
               responses={200: SessionMessage})
    def cleanup(session_id: str) -> Any:
        """Twin of `cleanup_session_request`."""
        service.cleanup(_checked(session_id), http_caller())
        return SessionMessage(message="Session cleaned up", session_id=session_id)

    @bp.get("/sessions/<session_id>/audio")
    @operation("getSessionAudio", "Download the session's current audio (WAV, Range requests supported)",
               tags=["sessions"], responses=file_responses(), errors=DOWNLOAD_ERRORS)
    def audio(session_id: str) -> Response:
        blob, job_id = jobs.session_audio_blob(http_caller(), _checked(session_id))
        return send_result_wav(jobs, blob, session_id, job_id)

    return bp

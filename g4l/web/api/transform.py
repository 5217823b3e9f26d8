"""``/api/v1`` for terry: ``POST /sessions/{id}/transform`` (rewrite the session's audio in a
preset's style), ``POST /sessions/transform`` (a new session from an uploaded take) and
``GET /variations`` (the presets). Parse, call
:class:`~g4l.services.transform.TransformService`, answer the queued job as the other
session operations do (:mod:`g4l.web.api.sessions`); the Socket.IO twin is
:mod:`g4l.web.transform_events`."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint
from pydantic import Field

from g4l.errors import SessionNotFound
from g4l.jobs.records import JobStatus
from g4l.services import presets
from g4l.services.sessions import Accepted, SessionService
from g4l.services.transform import TransformService
from g4l.web.api.access import http_caller
from g4l.web.api.models import _AUDIO, QueueStatus, SessionAccepted, _Request, _Response
from g4l.web.api.openapi import PREFIX
from g4l.web.api.routing import operation
from g4l.web.api.sessions import session_links
from plugin_protocol.payloads import SEED_MAX, TransformAudioRequest

_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ERRORS = (404, 409, 413, 429, 503)


class TransformRequest(_Request):
    """A transform's parameters (the socket's ``transform_audio_request`` fields)."""

    variation: str | None = Field(default=None, max_length=200,
                                  description="A preset (GET /api/v1/variations); required unless custom_prompt. "
                                              "Unknown: 400 `Unknown variation: <name>`")
    custom_prompt: str | None = Field(default=None, max_length=2000, description="Replaces the preset's text")
    flowstep: float | None = Field(default=None, description="More than 0 and less than 1: how much of the input "
                                                             "is rewritten (absent: the preset's, 0.12)")
    solver: str | None = Field(default=None, max_length=40, description="euler (default, 25 steps) | midpoint (64)")
    steps: int | None = Field(default=None, description="Solver steps, a whole number 1-250 (absent: the solver's)")
    seed: int | None = Field(default=None, ge=-1, le=SEED_MAX,
                             description="Same seed, input and parameters: the same audio; -1 or absent: the "
                                         "server picks one and reports it")
    audio_data: str | None = Field(default=None, min_length=1, json_schema_extra=_AUDIO,
                                   description="base64 WAV (under G4L_TRANSFORM_MAX_MB); absent: the session's "
                                               "current audio")


class NewTransformRequest(TransformRequest):
    """A transform of an uploaded take, in a new session."""

    audio_data: str = Field(min_length=1, json_schema_extra=_AUDIO,
                            description="base64 WAV (under G4L_TRANSFORM_MAX_MB)")


class Preset(_Response):
    name: str
    text: str = Field(description="The text MelodyFlow moves the audio toward")
    flowstep: float
    solver: str
    steps: dict[str, int] = Field(description="Default steps per solver")


class Variations(_Response):
    """terry's presets."""

    variations: list[Preset]
    default: str
    count: int
    defaults: dict[str, Any]


def _checked(session_id: str) -> str:
    if not _SESSION_ID.match(session_id):
        raise SessionNotFound(f"no session {session_id[:64]} (it ended or expired)")
    return session_id


def blueprint(service: SessionService) -> Blueprint:
    bp = Blueprint("api_transform", __name__, url_prefix=PREFIX)
    transforms = TransformService(service)

    def accepted(result: Accepted) -> tuple[SessionAccepted, int]:
        qs = QueueStatus(**service.queue_status(result.job_id, result.session_id))
        return SessionAccepted(session_id=result.session_id, job_id=result.job_id, kind="transform",
                               status=JobStatus.QUEUED, seed=result.seed, queue_status=qs,
                               links=session_links(result.session_id, result.job_id)), 202

    def request(body: TransformRequest, session_id: str | None) -> TransformAudioRequest:
        fields = body.model_dump(exclude_none=True)
        return TransformAudioRequest.model_validate({**fields, "session_id": session_id})

    @bp.get("/variations")
    @operation("listVariations", "terry's presets (name, text, defaults)", tags=["transform"],
               responses={200: Variations})
    def variations() -> Any:
        return Variations.model_validate(presets.listing())

    @bp.post("/sessions/<session_id>/transform")
    @operation("transformSession", "Rewrite the session's audio in a preset's style (terry, MelodyFlow)",
               tags=["transform"], body=TransformRequest, responses={202: SessionAccepted}, errors=_ERRORS,
               audio=True)
    def transform_session(session_id: str, body: TransformRequest) -> Any:
        """Twin of `transform_audio_request`. The result replaces the session's audio as a new version (operation
        `transform`), the input's length and format; `undo` (or `undo_transform_request`) brings back what it started
        from. Poll the session or the job. 409 `BUSY` while a job of the session runs."""
        return accepted(transforms.transform(request(body, _checked(session_id)), http_caller()))

    @bp.post("/sessions/transform")
    @operation("transformNewSession", "A new session holding the given take, transformed (terry)",
               tags=["transform"], body=NewTransformRequest, responses={202: SessionAccepted}, errors=_ERRORS,
               audio=True)
    def transform_new(body: NewTransformRequest) -> Any:
        """The take becomes version 1 of a new session and the transform version 2: undo returns to the take."""
        return accepted(transforms.transform(request(body, None), http_caller()))

    return bp

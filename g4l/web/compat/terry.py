"""terry's HTTP routes as gary4juce calls them (``shared/design/jerry-terry.md``), in the JUCE
envelope of :mod:`g4l.web.compat.juce` (whose blueprint they join, with its error handlers):

* ``POST /api/juce/transform_audio`` -> ``{success, session_id, job_id, seed, message}``; then
  the plugin polls ``/api/juce/poll_status/<id>`` (``transform_in_progress`` while it runs);
* ``POST /api/juce/undo_transform {session_id}`` -> ``{success, session_id, message,
  audio_data}`` (the audio the last transform started from);
* ``GET /variations`` (also ``/api/juce/variations``): the presets, which upstream's route
  crashed on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pybase64
from flask import Blueprint, Response, jsonify
from pydantic import BaseModel

from g4l.errors import NothingToUndo
from g4l.services import presets
from g4l.services.history import HistoryService
from g4l.services.sessions import SessionService
from g4l.services.transform import TransformService
from g4l.web.api.access import http_caller
from plugin_protocol.payloads import SessionRef, TransformAudioRequest


class TransformBody(TransformAudioRequest):
    """``transform_audio``: the socket request's fields plus ``seed`` (the plugin sends no
    ``session_id``: a new session holding its audio)."""


def install(bp: Blueprint, service: SessionService, body: Callable[[type[BaseModel]], Any],
            ok: Callable[..., Response]) -> None:
    """Add terry's routes to the JUCE blueprint ``bp`` (``body`` parses a JSON body into a
    model, ``ok`` answers ``{success: true, ...}``)."""
    transforms = TransformService(service)
    history = HistoryService(service)

    @bp.get("/variations")
    @bp.get("/api/juce/variations")
    def variations() -> Response:
        return jsonify(presets.listing())

    @bp.post("/api/juce/transform_audio")
    def transform_audio() -> Response:
        result = transforms.transform(body(TransformBody), http_caller())
        return ok(session_id=result.session_id, job_id=result.job_id, seed=result.seed,
                  duration=round(result.output_seconds, 3), message="Transform started")

    @bp.post("/api/juce/undo_transform")
    def undo_transform() -> Response:
        req = body(SessionRef)
        try:
            moved = history.undo_transform(req.session_id, http_caller())
        except NothingToUndo as exc:
            exc.http_status = 400  # upstream's status for "nothing to undo" (the body decides anyway)
            raise
        wav = history.audio(moved.version)
        return ok(session_id=moved.session_id, message="Transform undone", version=moved.version.version,
                  audio_data=service.offload(_b64, wav))


def _b64(data: bytes) -> str:
    return pybase64.b64encode(data).decode("ascii")

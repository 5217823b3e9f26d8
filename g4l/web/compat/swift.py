"""The Swift app's recovery route: after the app was suspended it asks for the session's
latest result, ``GET /api/latest_generated_audio/<session_id>``:

* 202 ``{"status": "in_progress"}`` while a generation runs;
* 404 ``{"status": "not_found"}`` (no such session, or another key's) or ``{"status": "no_audio"}``;
* 200 ``{"status": "success", "audio_data", "model_name", "prompt_duration", "session_id"}``.
"""

from __future__ import annotations

import pybase64
from flask import Blueprint, Response, jsonify

from g4l.services.sessions import SessionService
from g4l.web.api.access import http_caller


def blueprint(service: SessionService) -> Blueprint:
    bp = Blueprint("compat_swift", __name__)

    def reply(http_status: int, **body: object) -> Response:
        resp = jsonify(body)
        resp.status_code = http_status
        return resp

    @bp.get("/api/latest_generated_audio/<session_id>")
    def latest_generated_audio(session_id: str) -> Response:
        snap = service.snapshot(session_id[:64], http_caller())
        if not snap.exists:
            return reply(404, status="not_found")
        if snap.busy:
            return reply(202, status="in_progress")
        data = service.current_audio(snap)
        if data is None:
            return reply(404, status="no_audio")
        params = snap.params
        audio_data = service.offload(lambda raw: pybase64.b64encode(raw).decode("ascii"), data)
        return reply(200, status="success", audio_data=audio_data, session_id=snap.session_id,
                     model_name=params.model if params else None,
                     prompt_duration=params.prompt_seconds if params else None)

    return bp

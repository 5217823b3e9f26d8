"""The routes of the gary4juce plugin (and audiocraft.cpp's musicgen-server), in their
envelope: ``success`` on every reply, errors as strings, the upstream poll vocabulary.

They are twins of the device operations (the same :class:`SessionService` calls, limits,
rate limits, API keys and error codes); only the shape differs. The plugin hands any body
back whatever the HTTP status, so the body alone decides: ``{"success": false, "error":
"<text>", "code": "<CODE>"}`` for every refusal. What the plugin needs is in
``shared/design/http-clients.md``; the reply fields are in ``docs/http-clients.md``.
"""

from __future__ import annotations

from typing import Any, TypeVar

import pybase64
from flask import Blueprint, Response, current_app, jsonify
from pydantic import BaseModel
from werkzeug.exceptions import HTTPException

from g4l import audio
from g4l.errors import G4LError, Internal
from g4l.log import get_logger
from g4l.services.models import ModelCatalog
from g4l.services.sessions import Accepted, SessionService
from g4l.store.sessions import SessionStatus
from g4l.web.api.access import http_caller
from g4l.web.api.routing import parse_body
from g4l.web.compat import terry
from plugin_protocol.payloads import ContinueMusicRequest, ProcessAudioRequest, RetryMusicRequest, UpdateCroppedAudio

log = get_logger(__name__)

M = TypeVar("M", bound=BaseModel)
#: The upstream poll vocabulary.
UNKNOWN, QUEUED, PROCESSING, COMPLETED, FAILED = "unknown", "queued", "processing", "completed", "failed"


class RetryBody(RetryMusicRequest):
    """``retry_music``: the session of the last continue/retry, and the same parameters."""


class CropBody(UpdateCroppedAudio):
    """``update_cropped_audio``: the given audio becomes the session's current audio."""


def _ok(**fields: Any) -> Response:
    return jsonify({"success": True, **fields})


def _refused(exc: G4LError) -> Response:
    body: dict[str, Any] = {"success": False, "error": exc.message, "code": exc.code}
    if exc.session_id:
        body["session_id"] = exc.session_id
    if "retry_after" in exc.details:
        body["retry_after"] = exc.details["retry_after"]
    resp = jsonify(body)
    resp.status_code = exc.http_status
    return resp


def blueprint(service: SessionService) -> Blueprint:
    bp = Blueprint("compat_juce", __name__)
    catalog = ModelCatalog(service.ctx)

    @bp.errorhandler(G4LError)
    def _g4l(exc: G4LError) -> Response:
        return _refused(exc)

    @bp.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        err = G4LError(exc.description or exc.name)
        err.code = "TOO_LARGE" if exc.code == 413 else "INVALID_REQUEST"
        err.http_status = exc.code or 400
        return _refused(err)

    @bp.errorhandler(Exception)
    def _crash(exc: Exception) -> Response:
        log.exception("compat route crashed")
        return _refused(Internal("internal server error"))

    def body(model: type[M]) -> M:
        limit = current_app.config["G4L_SETTINGS"].max_payload_bytes + 64 * 1024
        return parse_body(model, limit, big=True)  # type: ignore[return-value]

    def accepted(result: Accepted) -> Response:
        return _ok(session_id=result.session_id, job_id=result.job_id, seed=result.seed,
                   duration=result.output_seconds, message="Processing started")

    @bp.get("/api/models")
    def models() -> Response:
        grouped = {size: [{"type": "single", "name": m.rsplit("/", 1)[-1], "path": m} for m in ids]
                   for size, ids in catalog.grouped().items()}
        # families: gary's, jerry's and terry's state (loaded, loading, failed with the reason).
        return _ok(models=grouped, default=service.specs.model(None), families=catalog.families())

    @bp.post("/api/juce/process_audio")
    def process_audio() -> Response:
        return accepted(service.bang(body(ProcessAudioRequest), http_caller()))

    @bp.post("/api/juce/continue_music")
    def continue_music() -> Response:
        # The plugin sends the last result's bytes and no session id: a new session each time.
        req = body(ContinueMusicRequest).model_copy(update={"session_id": None})
        return accepted(service.continue_(req, http_caller()))

    @bp.post("/api/juce/retry_music")
    def retry_music() -> Response:
        return accepted(service.retry(body(RetryBody), http_caller()))

    @bp.post("/api/juce/update_cropped_audio")
    def update_cropped_audio() -> Response:
        session_id = service.crop(body(CropBody), http_caller())
        return _ok(session_id=session_id, message="Cropped audio updated")

    terry.install(bp, service, body, _ok)  # transform_audio, undo_transform, variations

    @bp.get("/api/juce/poll_status/<session_id>")
    def poll_status(session_id: str) -> Response:
        return _ok(**poll(service, session_id[:64]))

    return bp


def poll(service: SessionService, session_id: str) -> dict[str, Any]:
    """The upstream poll answer (see the module docstring), formatted from the session's
    snapshot; every reply but ``unknown`` names the session and its last seed. While a job is
    queued or running, ``queue_status.status`` is never empty (the plugin gives up after 9 s
    without one)."""
    snap = service.snapshot(session_id, http_caller())
    base: dict[str, Any] = {"session_id": session_id, "generation_in_progress": False,
                            "transform_in_progress": False}
    if not snap.exists:
        return {**base, "status": UNKNOWN}
    base.update(seed=snap.seed, generation_seed=snap.seed)
    if snap.busy and snap.queue is not None:
        queue = snap.queue
        state = QUEUED if snap.status is SessionStatus.QUEUED else PROCESSING
        eta = float(queue["estimated_seconds"])
        # A transform polls as one (the plugin shows "transforming: N%"), a generation as a generation.
        return {**base, "generation_in_progress": not snap.transforming, "transform_in_progress": snap.transforming,
                "status": state, "progress": snap.progress,
                "queue_status": {"status": state, "message": queue["message"], "position": queue["position"],
                                 "total_queued": queue["total_queued"], "estimated_seconds": eta,
                                 "estimated_time": f"{round(eta)}s"}}
    if snap.error or snap.canceled:
        return {**base, "status": FAILED, "progress": 0, "error": snap.error or "the generation was canceled"}
    wav = service.current_audio(snap)
    if wav is None:
        return {**base, "status": UNKNOWN}
    info = service.offload(audio.probe_wav, wav)
    return {**base, "status": COMPLETED, "progress": 100, "duration": round(info.duration, 3),
            "audio_data": service.offload(_b64, wav)}


def _b64(data: bytes) -> str:
    return pybase64.b64encode(data).decode("ascii")

"""The realtime HLS API's routes: ``POST /api/stream/start``, ``GET /api/stream/status/<id>``
and ``POST /api/cleanup``, plus the finished result as ``.mp4`` and ``.wav``.

A thin adapter of :class:`~g4l.services.oneshot.OneShotStreams`: the same keys, owners,
rate limit and error codes as ``/api/v1`` (errors are ``{"error": {"code", "message"}}``).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response

from g4l.services.jobs import JobService, iso
from g4l.services.oneshot import READY, OneShotStreams
from g4l.web.api.access import http_caller
from g4l.web.api.download import DOWNLOAD_ERRORS, file_responses, send_blob, send_result_wav
from g4l.web.api.models import ErrorBody
from g4l.web.api.routing import operation
from g4l.web.compat.models import (
    StreamCleanedUp,
    StreamCleanupRequest,
    StreamStarted,
    StreamStartRequest,
    StreamStatus,
)
from g4l.web.urls import absolute

TAGS = ["realtime"]


def blueprint(jobs: JobService) -> Blueprint:
    bp = Blueprint("api_realtime", __name__)
    streams = OneShotStreams(jobs.ctx, jobs)

    @bp.post("/api/stream/start")
    @operation("startRealtimeStream", "Generate music from a text and stream it live over HLS", tags=TAGS,
               body=StreamStartRequest, responses={200: StreamStarted}, errors=(409, 429, 503))
    def start(body: StreamStartRequest) -> Any:
        """Answers at once; the stream is registered at once (silence until the first audio). 400 for an empty `text` or
        a language other than en, ru, kk; 409 STATIONS_FULL past 4 open streams of one key."""
        started = streams.start(http_caller(), text=body.text, language=body.language, mode=body.mode,
                                duration=body.duration, model=body.model)
        return StreamStarted(**started)

    @bp.get("/api/stream/status/<session_id>")
    @operation("getRealtimeStream", "A stream session's status, with absolute URLs", tags=TAGS,
               responses={200: StreamStatus})
    def status(session_id: str) -> Any:
        shot = streams.get(http_caller(), session_id)
        job, links = shot.job, streams.links(shot)
        ready = shot.status == READY
        base = f"/api/stream/{session_id}"
        err = shot.error
        progress = 1.0 if ready else (min(max(job.progress, 0), 100) / 100 if job else 0.0)
        return StreamStatus(
            session_id=session_id, status=shot.status, playlist_url=absolute(links["playlist_url"]),  # type: ignore[arg-type]
            page_url=absolute(links["page_url"]), mp4_url=absolute(base + "/result.mp4") if ready else None,
            wav_url=absolute(base + "/result.wav") if ready else None, progress=progress,
            error=ErrorBody(code=err["code"], message=err["message"]) if err else None, text=shot.info.get("text", ""),
            language=shot.info.get("language", "en"),
            created_at=iso(float(shot.info.get("created") or 0)) or "",
            finished_at=iso(job.finished) if job and job.status.final else None)

    @bp.post("/api/cleanup")
    @operation("cleanupRealtimeStream", "Stop a stream session and forget it", tags=TAGS,
               body=StreamCleanupRequest, responses={200: StreamCleanedUp}, errors=(404,))
    def cleanup(body: StreamCleanupRequest) -> Any:
        """Stops the stream, cancels its generation if still running, drops the MP4. The WAV stays with its job in
        /api/v1/jobs until retention."""
        return StreamCleanedUp(**streams.cleanup(http_caller(), body.session_id))

    @bp.get("/api/stream/<session_id>/result.mp4")
    @operation("getRealtimeStreamMp4", "The whole result as MP4 (AAC); Range supported", tags=TAGS,
               responses=file_responses("audio/mp4", "The MP4 file"),
               errors=(409, 416, 500))
    def result_mp4(session_id: str) -> Response:
        blob = streams.mp4_blob(http_caller(), session_id)
        return send_blob(jobs.ctx.blobs, blob, f"{session_id}.mp4", mimetype="audio/mp4")

    @bp.get("/api/stream/<session_id>/result.wav")
    @operation("getRealtimeStreamWav", "The whole result as WAV; Range supported", tags=TAGS,
               responses=file_responses(), errors=DOWNLOAD_ERRORS)
    def result_wav(session_id: str) -> Response:
        return send_result_wav(jobs, streams.wav_blob(http_caller(), session_id), session_id, session_id)

    return bp

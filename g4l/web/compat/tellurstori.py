"""The TellUrStori service's job routes beside our own: ``GET /api/v1/status/<job_id>`` and
``GET /api/v1/download/<job_id>`` (its ``generate``, ``jobs``, ``prompt/build`` and
``/health*`` are ours already; ``WS /ws`` is :mod:`g4l.web.job_socket`).

Twins of ``/api/v1/jobs/<id>`` and its audio: the same owners and errors; only the
status vocabulary (``processing``, ``cancelled``) and the field names differ.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response

from g4l.jobs.records import JobStatus
from g4l.services.jobs import JobService, JobView, iso
from g4l.web.api.access import http_caller
from g4l.web.api.download import DOWNLOAD_ERRORS, file_responses, send_job_wav
from g4l.web.api.openapi import PREFIX
from g4l.web.api.routing import operation
from g4l.web.compat.models import StoriStatus

TAGS = ["tellurstori"]
_STATUS = {JobStatus.QUEUED: "queued", JobStatus.RUNNING: "processing", JobStatus.COMPLETED: "completed",
           JobStatus.FAILED: "failed", JobStatus.CANCELED: "cancelled"}
_MESSAGE = {JobStatus.QUEUED: "Waiting in the queue", JobStatus.RUNNING: "Generation in progress",
            JobStatus.COMPLETED: "Generation completed", JobStatus.FAILED: "Generation failed",
            JobStatus.CANCELED: "Generation cancelled"}


def download_url(job_id: str) -> str:
    return f"{PREFIX}/download/{job_id}"


def stori_status(view: JobView, file_size: int | None = None) -> StoriStatus:
    """A job in TellUrStori's shape (also what ``WS /ws`` sends)."""
    job = view.job
    done = job.status is JobStatus.COMPLETED and bool(job.output_blob)
    message = _MESSAGE[job.status]
    if job.status is JobStatus.QUEUED and view.position:
        message = f"Waiting in the queue (position {view.position})"
    return StoriStatus(
        job_id=job.id, status=_STATUS[job.status],  # type: ignore[arg-type]
        progress=1.0 if done else min(max(job.progress, 0), 100) / 100, message=message,
        created_at=iso(job.created) or "", started_at=iso(job.started),
        completed_at=iso(job.finished) if job.status.final else None,
        error_message=(job.error or "generation failed") if job.status is JobStatus.FAILED else None,
        prompt=job.spec.description, duration=job.spec.output_seconds,
        audio_url=download_url(job.id) if done else None, file_size=file_size,
        actual_duration=job.spec.output_seconds if done else None)


def blueprint(jobs: JobService) -> Blueprint:
    bp = Blueprint("api_tellurstori", __name__, url_prefix=PREFIX)

    @bp.get("/status/<job_id>")
    @operation("getJobStatusStori", "A job's status in the TellUrStori shape", tags=TAGS,
               responses={200: StoriStatus})
    def status(job_id: str) -> Any:
        view = jobs.view(http_caller(), job_id)
        return stori_status(view, jobs.result_size(view.job))

    @bp.get("/download/<job_id>")
    @operation("downloadJobStori", "Download a completed job's WAV (Range supported)", tags=TAGS,
               responses=file_responses(), errors=DOWNLOAD_ERRORS)
    def download(job_id: str) -> Response:
        return send_job_wav(jobs, http_caller(), job_id)

    return bp

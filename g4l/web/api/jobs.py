"""``/api/v1/generate`` and ``/api/v1/jobs``: the job-style API of DAW clients."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response

from g4l.jobs.records import Job, JobStatus
from g4l.services.jobs import JobService, JobView, iso
from g4l.services.specs import SAMPLING_FIELDS
from g4l.web.api.access import http_caller
from g4l.web.api.download import DOWNLOAD_ERRORS, file_responses, send_job_wav
from g4l.web.api.models import ErrorBody, GenerateRequest, JobAccepted, JobLinks, JobList, JobListQuery
from g4l.web.api.models import JobStatus as JobStatusBody
from g4l.web.api.openapi import PREFIX
from g4l.web.api.routing import operation


def links(job_id: str) -> JobLinks:
    base = f"{PREFIX}/jobs/{job_id}"
    return JobLinks(self=base, audio=f"{base}/audio", cancel=base)


def job_status(view: JobView) -> JobStatusBody:
    """The JSON form of a job (also what ``job_update`` events carry)."""
    job: Job = view.job
    error = ErrorBody(code=job.error_code or "GENERATION_FAILED", message=job.error or "") \
        if job.status is JobStatus.FAILED else None
    done = job.status is JobStatus.COMPLETED and bool(job.output_blob)
    return JobStatusBody(
        job_id=job.id, kind=job.kind, status=job.status,
        progress=1.0 if job.status is JobStatus.COMPLETED else min(max(job.progress, 0), 100) / 100,
        position=view.position, eta_seconds=view.eta_seconds, error=error,
        audio_url=f"{PREFIX}/jobs/{job.id}/audio" if done else None, session_id=job.session_id or None,
        model=job.model, seed=job.spec.seed, created_at=iso(job.created) or "", started_at=iso(job.started),
        finished_at=iso(job.finished), links=links(job.id),
    )


def blueprint(jobs: JobService) -> Blueprint:
    bp = Blueprint("api_jobs", __name__, url_prefix=PREFIX)

    @bp.post("/generate")
    @operation("createGenerateJob", "Start a generation (text prompt and/or audio)", tags=["jobs"],
               body=GenerateRequest, responses={202: JobAccepted}, errors=(429, 503), audio=True)
    def generate(body: GenerateRequest) -> Any:
        """Queues a job and answers at once. Poll `links.self`, or subscribe to the job over Socket.IO; download
        `links.audio` when the status is `completed`."""
        view = jobs.generate(http_caller(), duration=body.duration, prompt=body.prompt, audio_b64=body.audio,
                             model=body.model, prompt_duration=body.prompt_duration, seed=body.seed,
                             sampling=body.model_dump(include=set(SAMPLING_FIELDS)))
        accepted = JobAccepted(job_id=view.job.id, status=JobStatus.QUEUED, position=view.position or 0,
                               estimated_seconds=view.eta_seconds or 0.0, created_at=iso(view.job.created) or "",
                               message=f"Generation job queued (position {view.position})" if view.position
                               else "Generation job queued",
                               links=links(view.job.id))
        return accepted, 202

    @bp.get("/jobs")
    @operation("listJobs", "The caller's recent jobs, newest first", tags=["jobs"], query=JobListQuery,
               responses={200: JobList})
    def list_jobs(query: JobListQuery) -> Any:
        views, total = jobs.list(http_caller(), query.offset, query.limit)
        nxt = query.offset + len(views)
        return JobList(jobs=[job_status(v) for v in views], total=total, offset=query.offset, limit=query.limit,
                       next_offset=nxt if nxt < total else None)

    @bp.get("/jobs/<job_id>")
    @operation("getJob", "A job's status, progress, queue position and ETA", tags=["jobs"],
               responses={200: JobStatusBody})
    def get_job(job_id: str) -> Any:
        return job_status(jobs.view(http_caller(), job_id))

    @bp.delete("/jobs/<job_id>")
    @operation("cancelJob", "Cancel a job (queued: dropped; running: stopped between model steps)",
               tags=["jobs"], responses={200: JobStatusBody, 202: JobStatusBody})
    def cancel_job(job_id: str) -> Any:
        """Waits up to 2.5 s for a running job to stop: 200 with its final status, or 202 with `running` if the worker
        has not confirmed yet (poll until `canceled`). A finished job is left as it is (200)."""
        status = job_status(jobs.cancel(http_caller(), job_id))
        return status, 202 if JobStatus(status.status).pending else 200

    @bp.get("/jobs/<job_id>/audio")
    @operation("getJobAudio", "Download the result WAV (Range requests supported)", tags=["jobs"],
               responses=file_responses(), errors=DOWNLOAD_ERRORS)
    def job_audio(job_id: str) -> Response:
        return send_job_wav(jobs, http_caller(), job_id)

    return bp

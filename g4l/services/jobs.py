"""Jobs as the HTTP API sees them: start a ``generate`` job, read, list, cancel, and the
result; plus the poll view of a session. Socket.IO and HTTP share :class:`SessionService`
for the device operations; this module adds what only a job-style client needs.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

import gevent
import pybase64

from g4l import keys
from g4l.context import Context
from g4l.errors import NotFound, NotReady
from g4l.jobs import delivery, lifecycle
from g4l.jobs.kinds import KindName
from g4l.jobs.queue import QueuePosition
from g4l.jobs.records import Job, JobStatus, new_job_id
from g4l.jobs.spec import AudioFormat, prompt_wav
from g4l.log import get_logger
from g4l.services.auth import Caller
from g4l.services.sessions import SessionService
from g4l.services.specs import PARAM_FIELDS
from g4l.services.uploads import decode_upload

log = get_logger(__name__)

#: How long DELETE waits for a running job to stop before answering "still running".
CANCEL_WAIT_S = 2.5


def iso(ts: float | None) -> str | None:
    """A Unix time as an RFC 3339 UTC timestamp."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class JobView:
    """A job with its live queue position (what GET /jobs/{id} formats)."""

    job: Job
    position: int | None
    eta_seconds: float | None


class JobService:
    """Generate jobs and job access for one caller at a time.

    :param sessions: the device operations service (its offload, rate limit and cancel).
    """

    def __init__(self, ctx: Context, sessions: SessionService) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.sessions = sessions

    # ------------------------------------------------------------ generate
    def generate(self, caller: Caller, *, duration: float, prompt: str | None = None, audio_b64: str | None = None,
                 model: str | None = None, prompt_duration: int | None = None, seed: int | None = None,
                 sampling: dict[str, Any] | None = None, job_id: str | None = None) -> JobView:
        """Queue a generation of ``duration`` seconds from a text prompt, audio, or both.

        With audio, the model continues its last ``prompt_duration`` seconds and the result
        (which begins with them) keeps the audio's rate, channels and sample format.

        :param sampling: ``top_k`` / ``top_p`` / ``temperature`` / ``cfg_coef`` given.
        :param job_id: the new job's id, when the caller needs it before the job is queued
            (``new_job_id()``; default: a fresh one).
        """
        resolver = self.sessions.specs
        spec = resolver.generate_spec(duration=duration, description=prompt, model=model, given=sampling or {},
                                      seed=seed, prompt_seconds=prompt_duration, fmt=None)
        self.sessions.check_capacity(spec.model)
        upload = decode_upload(audio_b64, self.settings, self.sessions.offload) if audio_b64 else None
        if upload is not None:
            a = upload.audio
            spec = resolver.generate_spec(
                duration=duration, description=prompt, model=model, given=sampling or {}, seed=seed,
                prompt_seconds=prompt_duration,
                fmt=AudioFormat(sample_rate=a.sample_rate, channels=a.channels, subtype=a.subtype),
                audio_seconds=a.duration)
        self.sessions.check_rate(caller)
        job_id = job_id or new_job_id()
        if upload is not None:
            window = self.sessions.offload(prompt_wav, spec, upload.audio.samples, upload.audio.sample_rate)
            spec = spec.model_copy(update={"prompt_blob": self.ctx.blobs.put(window, session_id="", kind="prompt",
                                                                             job_id=job_id)})
        job = Job(id=job_id, kind=KindName.GENERATE, session_id="", spec=spec, owner=caller.owner)
        try:
            self.ctx.queue.enqueue(job, limit=self.settings.max_queue)
        except Exception:
            if spec.prompt_blob:
                self.ctx.blobs.delete(spec.prompt_blob)
            raise
        log.info("job queued", job_id=job_id, kind=KindName.GENERATE, model=spec.model, seconds=duration,
                 audio=upload is not None)
        return self._view(job, self.ctx.queue.position(job_id))

    # ------------------------------------------------------------ access
    def get(self, caller: Caller, job_id: str) -> Job:
        """The caller's job. :raises NotFound: unknown, expired, or another key's job."""
        job = self.ctx.jobs.get(job_id) if keys.valid_id(job_id) else None
        if job is None or not caller.can_see(job.owner):
            raise NotFound(f"no job {job_id}" if keys.valid_id(job_id) else "no job with that id")
        return job

    def view(self, caller: Caller, job_id: str) -> JobView:
        job = self.get(caller, job_id)
        return self._view(job)

    def peek(self, job_id: str, position: QueuePosition | None = None) -> JobView | None:
        """Any job's view, without an owner check (for events to already-checked
        subscribers); ``position``: already read, for a waiting job."""
        job = self.ctx.jobs.get(job_id)
        return self._view(job, position) if job is not None else None

    def list(self, caller: Caller, offset: int = 0, limit: int = 20) -> tuple[list[JobView], int]:
        """The caller's recent jobs, newest first, and how many it has."""
        ids, total = self.ctx.jobs.owned(caller.owner, offset, limit)
        views = []
        for job_id in ids:
            job = self.ctx.jobs.get(job_id)
            if job is not None:
                views.append(self._view(job))
        return views, total

    def cancel(self, caller: Caller, job_id: str, wait_s: float = CANCEL_WAIT_S) -> JobView:
        """Cancel the job: a queued one is dropped at once, a running one stops between model
        steps. Waits up to ``wait_s`` for the worker to confirm, then answers what it sees.
        A finished job is left as it is."""
        job = self.get(caller, job_id)
        if not job.status.final:
            lifecycle.request_cancel(self.ctx, job.id)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                current = self.ctx.jobs.get(job.id)
                if current is None or current.status.final:
                    break
                gevent.sleep(0.05)
        return self.view(caller, job_id)

    def result_blob(self, caller: Caller, job_id: str) -> str:
        """The blob id of the job's WAV. :raises NotReady: no result (yet, or ever)."""
        job = self.get(caller, job_id)
        if job.status is not JobStatus.COMPLETED or not job.output_blob:
            if job.status.final:
                raise NotReady(f"job {job.id} ended {job.status}: it has no audio")
            raise NotReady(f"job {job.id} is {job.status}; poll it until it is completed")
        return job.output_blob

    def result_size(self, job: Job) -> int | None:
        """The stored WAV's size in bytes (None before it is stored)."""
        if job.status is not JobStatus.COMPLETED or not job.output_blob:
            return None
        info = self.ctx.blobs.info(job.output_blob)
        return info.length if info is not None else None

    def in_flight(self, job_id: str | None) -> bytes | None:
        """A finished job's WAV while the worker is still writing it to GridFS."""
        data = delivery.read_result(self.ctx, job_id, None, held=self.sessions.held.get,
                                    offload=self.sessions.offload)
        return bytes(data) if data is not None else None

    def _view(self, job: Job, position: QueuePosition | None = None) -> JobView:
        eta = None
        pos = None
        if job.status is JobStatus.QUEUED:
            position = position or self.ctx.queue.position(job.id)
            pos = position.position or None
            eta = position.estimated_seconds
        elif job.status is JobStatus.RUNNING:
            avg = self.ctx.queue.average_job_seconds()
            elapsed = max(0.0, time.time() - (job.started or time.time()))
            done = job.progress / 100
            eta = elapsed * (1 - done) / done if done >= 0.05 else max(avg - elapsed, 1.0)
            eta = round(eta, 1)
        elif job.status.final:
            eta = 0.0
        return JobView(job, pos, eta)

    # ------------------------------------------------------------ sessions over HTTP
    def session_poll(self, caller: Caller, session_id: str, include_audio: bool = True) -> dict[str, Any]:
        """The upstream poll route's answer: ``session_id, generation_in_progress, progress,
        status, error, audio_data`` (``None`` until done), ``queue_status``, plus the
        session's model and parameters."""
        self.sessions.require(session_id, caller)
        snap = self.sessions.snapshot(session_id, caller)
        audio_data = None
        if include_audio and snap.has_audio and not snap.busy:
            data = self.sessions.current_audio(snap)
            audio_data = self.sessions.offload(_b64, data) if data is not None else None
        fields = snap.params.as_fields() if snap.params else dict.fromkeys(PARAM_FIELDS)
        return {
            "session_id": session_id, "generation_in_progress": snap.busy, "progress": snap.progress,
            "status": snap.status.value, "error": snap.error, "error_code": snap.error_code,
            "audio_data": audio_data, "has_audio": snap.has_audio, "queue_status": snap.queue,
            "queue_position": snap.queue_position, "job_id": snap.job_id, "model_name": snap.model_name,
            "parameters": fields, "version": snap.version, "seed": snap.seed,
        }

    def session_audio_blob(self, caller: Caller, session_id: str) -> tuple[str, str | None]:
        """The blob id of the session's current audio, and the job that made it (if any)."""
        session = self.sessions.require(session_id, caller)
        blob = session.get("current_blob")
        if not blob:
            raise NotReady("this session has no audio yet", session_id=session_id)
        # Its last job's hand-off is this audio only while that job's result is current.
        job_id = session.get("job_id") if blob == session.get("last_output_blob") else None
        return blob, job_id or None


def _b64(data: bytes) -> str:
    return pybase64.b64encode(data).decode("ascii")

"""Jobs as the HTTP API sees them: start a ``generate`` job, read, list, cancel, and the
result; plus the poll view of a session. Socket.IO and HTTP share :class:`SessionService`
for the device operations; this module adds what only a job-style client needs.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from dataclasses import dataclass
from typing import Any

import gevent
import pybase64

from g4l import audio
from g4l.context import Context
from g4l.errors import InvalidRequest, ModelNotAllowed, NotFound, NotReady, QueueFull, SessionNotFound
from g4l.jobs import handoff
from g4l.jobs.queue import QueuePosition
from g4l.jobs.records import FINAL_STATES, Job, new_job_id
from g4l.log import get_logger
from g4l.services.auth import Caller
from g4l.services.sessions import MODEL_RATE, SessionService
from g4l.services.uploads import Upload, decode_upload
from g4l.worker.generation import model_prompt

log = get_logger(__name__)

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: How long DELETE waits for a running job to stop before answering "still running".
CANCEL_WAIT_S = 2.5


def iso(ts: float | None) -> str | None:
    """A Unix time as an RFC 3339 UTC timestamp."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
                 model: str | None = None, prompt_duration: int | None = None, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, cfg_coef: float | None = None,
                 seed: int | None = None) -> JobView:
        """Queue a generation of ``duration`` seconds from a text prompt, audio, or both.

        With audio, the model continues its last ``prompt_duration`` seconds and the result
        (which begins with them) keeps the audio's rate, channels and sample format.
        """
        s = self.settings
        if not 0 < duration <= s.max_generate_seconds:
            raise InvalidRequest(f"duration must be more than 0 and at most {s.max_generate_seconds:g} seconds")
        model = (model or "").strip() or s.model_default
        if model not in s.models:
            raise ModelNotAllowed(f"model '{model}' is not available here; choose one of: " + ", ".join(s.models))
        prompt_seconds = prompt_duration or s.default_prompt_seconds
        if not s.min_prompt_seconds <= prompt_seconds <= s.max_prompt_seconds:
            raise InvalidRequest(f"prompt_duration must be {s.min_prompt_seconds}-{s.max_prompt_seconds} seconds")
        if self.ctx.queue.depth() >= s.max_queue:
            raise QueueFull(f"the queue is full ({s.max_queue} jobs); try again shortly")
        upload = decode_upload(audio_b64, s, self.sessions.offload) if audio_b64 else None
        window = min(float(prompt_seconds), upload.audio.duration) if upload else 0.0
        if upload is not None and duration <= window:
            raise InvalidRequest(f"duration ({duration:g} s) must be longer than the audio prompt ({window:.2f} s)")
        self.sessions.check_rate(caller.owner)
        job_id = new_job_id()
        params: dict[str, Any] = {
            "description": (prompt or "").strip() or None, "duration": float(duration),
            "top_k": 250 if top_k is None else top_k, "top_p": 0.0 if top_p is None else top_p,
            "temperature": 1.0 if temperature is None else temperature,
            "cfg_coef": 3.0 if cfg_coef is None else cfg_coef, "seed": seed,
        }
        prompt_blob = None
        if upload is not None:
            a = upload.audio
            params.update(prompt_duration=prompt_seconds, sample_rate=a.sample_rate, channels=a.channels,
                          subtype=a.subtype)
            wav = self.sessions.offload(_prompt_wav, upload, float(prompt_seconds))
            prompt_blob = self.ctx.blobs.put(wav, session_id="", kind="prompt", job_id=job_id)
        job = Job(id=job_id, kind="generate", session_id="", model=model, params=params, prompt_blob=prompt_blob,
                  owner=caller.owner)
        try:
            self.ctx.queue.enqueue(job, limit=s.max_queue)
        except Exception:
            if prompt_blob:
                self.ctx.blobs.delete(prompt_blob)
            raise
        log.info("job queued", job_id=job_id, kind="generate", model=model, seconds=duration,
                 audio=upload is not None)
        return self._view(job, self.ctx.queue.position(job_id))

    # ------------------------------------------------------------ access
    def get(self, caller: Caller, job_id: str) -> Job:
        """The caller's job. :raises NotFound: unknown, expired, or another key's job."""
        job = self.ctx.jobs.get(job_id) if isinstance(job_id, str) and _ID.match(job_id) else None
        if job is None or (caller.keyed and job.owner != caller.owner):
            raise NotFound(f"no job {job_id[:64]}")
        return job

    def view(self, caller: Caller, job_id: str) -> JobView:
        job = self.get(caller, job_id)
        return self._view(job, self.ctx.queue.position(job.id) if job.status == "queued" else None)

    def peek(self, job_id: str) -> JobView | None:
        """Any job's view, without an owner check (for events to already-checked subscribers)."""
        job = self.ctx.jobs.get(job_id)
        if job is None:
            return None
        return self._view(job, self.ctx.queue.position(job.id) if job.status == "queued" else None)

    def list(self, caller: Caller, offset: int = 0, limit: int = 20) -> tuple[list[JobView], int]:
        """The caller's recent jobs, newest first, and how many it has."""
        ids, total = self.ctx.jobs.owned(caller.owner, offset, limit)
        views = []
        for job_id in ids:
            job = self.ctx.jobs.get(job_id)
            if job is not None:
                views.append(self._view(job, self.ctx.queue.position(job.id) if job.status == "queued" else None))
        return views, total

    def cancel(self, caller: Caller, job_id: str, wait_s: float = CANCEL_WAIT_S) -> JobView:
        """Cancel the job: a queued one is dropped at once, a running one stops between model
        steps. Waits up to ``wait_s`` for the worker to confirm, then answers what it sees.
        A finished job is left as it is."""
        job = self.get(caller, job_id)
        if job.status not in FINAL_STATES:
            self.sessions.cancel_job(job.id)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                current = self.ctx.jobs.get(job.id)
                if current is None or current.status in FINAL_STATES:
                    break
                gevent.sleep(0.05)
        return self.view(caller, job_id)

    def result_blob(self, caller: Caller, job_id: str) -> str:
        """The blob id of the job's WAV. :raises NotReady: no result (yet, or ever)."""
        job = self.get(caller, job_id)
        if job.status != "completed" or not job.output_blob:
            if job.status in FINAL_STATES:
                raise NotReady(f"job {job.id} ended {job.status}: it has no audio")
            raise NotReady(f"job {job.id} is {job.status}; poll it until it is completed")
        return job.output_blob

    def in_flight(self, job_id: str | None) -> bytes | None:
        """A finished job's WAV while the worker is still writing it to GridFS."""
        if not job_id:
            return None
        try:
            return handoff.read_wav(self.ctx, job_id, held=self.sessions.held.get, offload=self.sessions.offload)
        except (KeyError, ValueError):
            return None  # GridFS has (or will have) the file

    def read_audio(self, blob_id: str, job_id: str | None) -> bytes | None:
        try:
            return self.ctx.blobs.get(blob_id)
        except KeyError:
            return self.in_flight(job_id)

    def _view(self, job: Job, position: QueuePosition | None) -> JobView:
        eta = None
        pos = None
        if job.status == "queued" and position is not None:
            pos = position.position or None
            eta = position.estimated_seconds
        elif job.status == "running":
            avg = self.ctx.queue.average_job_seconds()
            elapsed = max(0.0, time.time() - (job.started or time.time()))
            done = job.progress / 100
            eta = elapsed * (1 - done) / done if done >= 0.05 else max(avg - elapsed, 1.0)
            eta = round(eta, 1)
        elif job.status in FINAL_STATES:
            eta = 0.0
        return JobView(job, pos, eta)

    # ------------------------------------------------------------ sessions over HTTP
    def session_poll(self, caller: Caller, session_id: str, include_audio: bool = True) -> dict[str, Any]:
        """The upstream poll route's answer: ``session_id, generation_in_progress, progress,
        status, error, audio_data`` (``None`` until done), ``queue_status``, plus the
        session's model and parameters."""
        status = self.sessions.status(session_id, owner=caller.scope)
        if not status["exists"]:
            raise SessionNotFound(f"no session {session_id} (it ended or expired)", session_id=session_id)
        session = self.ctx.sessions.get(session_id) or {}
        job_id = session.get("job_id") or None
        queue_status = None
        if job_id and status["generation_in_progress"]:
            queue_status = self.sessions.queue_status(job_id, session_id)
        blob = session.get("current_blob") or None
        audio_data = None
        if include_audio and blob and not status["generation_in_progress"]:
            data = self.read_audio(blob, job_id)
            audio_data = self.sessions.offload(_b64, data) if data is not None else None
        params = {}
        for name in ("model_name", "prompt_duration", "top_k", "top_p", "temperature", "cfg_coef", "description"):
            raw = session.get(name)
            if raw in (None, ""):
                params[name] = None
            elif name in ("prompt_duration", "top_k"):
                params[name] = int(float(raw))
            elif name in ("top_p", "temperature", "cfg_coef"):
                params[name] = float(raw)
            else:
                params[name] = raw
        return {
            "session_id": session_id, "generation_in_progress": status["generation_in_progress"],
            "progress": status["progress"], "status": status["status"], "error": status["error"],
            "error_code": session.get("error_code") or None, "audio_data": audio_data,
            "has_audio": bool(blob), "queue_status": queue_status, "queue_position": status["queue_position"],
            "job_id": job_id, "model_name": status["model_name"], "parameters": params,
            "version": status["version"],
        }

    def session_audio_blob(self, caller: Caller, session_id: str) -> tuple[str, str | None]:
        """The blob id of the session's current audio, and the job that made it (if any)."""
        session = self.ctx.sessions.require(session_id)
        self.sessions.check_owner(session, caller.scope)
        blob = session.get("current_blob")
        if not blob:
            raise NotReady("this session has no audio yet", session_id=session_id)
        return blob, session.get("job_id") or None


def _prompt_wav(upload: Upload, seconds: float) -> bytes:
    a = upload.audio
    window = audio.tail(a.samples, a.sample_rate, seconds)
    return audio.encode_wav(model_prompt(window, a.sample_rate, MODEL_RATE), MODEL_RATE, "FLOAT")


def _b64(data: bytes) -> str:
    return pybase64.b64encode(data).decode("ascii")

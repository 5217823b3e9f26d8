"""Bang, continue, retry, crop, cleanup, status and chunked restore: the device
operations, whatever protocol they arrive by.

Every operation validates everything first (payload, audio, model, session state) and
only then writes, so a bad request changes nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent

from g4l import audio, keys
from g4l.context import Context
from g4l.errors import (Busy, Internal, InvalidRequest, ModelNotAllowed, NothingToRetry, QueueFull, RateLimited,
                        SessionNotFound, TooLarge)
from g4l.jobs import lifecycle
from g4l.jobs.queue import QueuePosition
from g4l.jobs.records import Job, new_job_id
from g4l.log import get_logger
from g4l.services.held_inputs import HeldInputs
from g4l.services.ratelimit import RateLimiter
from g4l.services.uploads import Offload, Upload, decode_upload
from g4l.store.sessions import Session, format_field, new_session_id, parse_format
from g4l.worker.generation import model_prompt, prompt_window
from plugin_protocol.payloads import (ContinueMusicRequest, GenerationParams, ProcessAudioRequest,
                                      RetryMusicRequest, UpdateCroppedAudio)

log = get_logger(__name__)

#: The rate every MusicGen model works at; prompts are stored ready for it.
MODEL_RATE = 32_000
#: A queued job's prompt window waits this long in Redis; a job started later (a long
#: queue, a requeue) cuts its prompt from the stored input instead.
PROMPT_TTL_S = 3600
_PARAM_FIELDS = ("model_name", "prompt_duration", "top_k", "top_p", "temperature", "cfg_coef", "description")
_DEFAULTS = {"top_k": 250, "top_p": 0.0, "temperature": 1.0, "cfg_coef": 3.0, "description": None}


@dataclass(frozen=True)
class Accepted:
    """A generation request that is now queued."""

    session_id: str
    job_id: str
    kind: str
    queue: QueuePosition


def _inline(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


class SessionService:
    """The device operations. ``offload`` runs CPU-heavy calls off the event loop."""

    def __init__(self, ctx: Context, offload: Offload = _inline,
                 spawn: Callable[..., Any] = gevent.spawn) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.offload = offload
        self.spawn = spawn
        self._limiter = RateLimiter(ctx.redis)
        #: Continue uploads kept until their result is sent (see :mod:`g4l.jobs.handoff`).
        self.held = HeldInputs(self.settings.held_inputs_mb * 1024 * 1024)

    # ------------------------------------------------------------ checks
    def check_rate(self, client: str) -> None:
        """At most ``rate_limit_per_minute`` generation requests per client in any 60 s
        (a sliding window: see :mod:`g4l.services.ratelimit`). ``client`` is the caller's
        owner id (API key hash, or IP when keys are off)."""
        limit = self.settings.rate_limit_per_minute
        if limit <= 0:
            return
        decision = self._limiter.take(client, limit)
        if not decision.allowed:
            retry_after = decision.retry_after
            raise RateLimited(f"too many generation requests: {limit} a minute; retry in {retry_after} s",
                              retry_after=retry_after)

    def check_owner(self, session: Session, owner: str | None) -> None:
        """With API keys configured, a session is visible only to the key that created it:
        to anyone else it does not exist. ``owner=None`` (internal callers) skips the check."""
        if owner is None or not self.settings.api_keys:
            return
        if session.get("owner") != owner:
            raise SessionNotFound(f"no session {session.id} (it ended or expired)", session_id=session.id)

    def _require(self, session_id: str, owner: str | None) -> Session:
        session = self.ctx.sessions.require(session_id)
        self.check_owner(session, owner)
        return session

    def _check_capacity(self) -> None:
        if self.ctx.queue.depth() >= self.settings.max_queue:
            raise QueueFull(f"the queue is full ({self.settings.max_queue} jobs); try again shortly")

    def _resolve(self, given: dict[str, Any], session: Session | None) -> dict[str, Any]:
        """The effective parameters: what the client sent, else the session's, else defaults."""
        params: dict[str, Any] = {}
        for name in _PARAM_FIELDS:
            if name in given:
                params[name] = given[name]
            elif session is not None and session.get(name) not in (None, ""):
                raw = session[name]
                params[name] = int(float(raw)) if name in ("prompt_duration", "top_k") else (
                    float(raw) if name in ("top_p", "temperature", "cfg_coef") else raw)
            elif name == "model_name":
                params[name] = self.settings.model_default
            elif name == "prompt_duration":
                params[name] = self.settings.default_prompt_seconds
            else:
                params[name] = _DEFAULTS[name]
        model = params["model_name"]
        if model not in self.settings.models:
            raise ModelNotAllowed(f"model '{model}' is not available here; choose one of: "
                                  + ", ".join(self.settings.models))
        lo, hi = self.settings.min_prompt_seconds, self.settings.max_prompt_seconds
        if not lo <= params["prompt_duration"] <= hi:
            raise InvalidRequest(f"prompt_duration must be {lo}-{hi} seconds")
        return params

    def _upload(self, text: str) -> Upload:
        return decode_upload(text, self.settings, self.offload)

    # ------------------------------------------------------------ operations
    def bang(self, req: ProcessAudioRequest, client: str, owner: str | None = None) -> Accepted:
        """New session continuing the FIRST ``prompt_duration`` seconds of the audio.

        :param owner: who the session belongs to (see :mod:`g4l.services.auth`); every
            operation below takes it and, with API keys on, refuses other owners' sessions.
        """
        params = self._resolve(req.given(), None)
        self._check_capacity()
        upload = self._upload(req.audio_data)
        self.check_rate(client)
        session_id, job_id = new_session_id(), new_job_id()
        self.ctx.sessions.create(session_id, status="queued", job_id=job_id, owner=owner or "",
                                 **self._session_params(params))
        return self._submit("bang", session_id, job_id, params, upload=upload, owner=owner)

    def continue_(self, req: ContinueMusicRequest, client: str, owner: str | None = None, *,
                  hold_input: bool = False) -> Accepted:
        """Continue the LAST ``prompt_duration`` seconds of the given (or stored) audio.

        :param hold_input: keep the upload in this process until the result is sent, so
            only the new audio comes back through Redis: for a caller whose result this
            node delivers (a socket here), not for one that polls for it."""
        session = self._require(req.session_id, owner) if req.session_id else None
        if session is not None and session.busy:
            raise Busy("Generation already in progress", session_id=session.id)
        params = self._resolve(req.given(), session)
        if req.audio_data is None and (session is None or not session.get("current_blob")):
            raise InvalidRequest("no audio: send audio_data (this session has none stored yet)",
                                 session_id=req.session_id)
        self._check_capacity()
        upload = self._upload(req.audio_data) if req.audio_data is not None else None
        self.check_rate(client)
        job_id = new_job_id()
        if session is None:
            session_id = new_session_id()
            self.ctx.sessions.create(session_id, status="queued", job_id=job_id, owner=owner or "",
                                     **self._session_params(params))
        else:
            session_id = session.id
            self.ctx.sessions.begin_job(session_id, job_id)
            self.ctx.sessions.update(session_id, **self._session_params(params))
        if upload is not None:
            return self._submit("continue", session_id, job_id, params, upload=upload, owner=owner,
                                hold=hold_input)
        return self._submit("continue", session_id, job_id, params, input_blob=session["current_blob"],
                            owner=owner)

    def retry(self, req: RetryMusicRequest, client: str, owner: str | None = None) -> Accepted:
        """Redo the last continue from the input it used."""
        session = self._require(req.session_id, owner)
        if session.busy:
            raise Busy("Generation already in progress", session_id=session.id)
        source = session.get("retry_input_blob")
        if not source:
            raise NothingToRetry("nothing to retry: this session has had no continue yet", session_id=session.id)
        params = self._resolve(req.given(), session)
        self._check_capacity()
        self.check_rate(client)
        job_id = new_job_id()
        self.ctx.sessions.begin_job(session.id, job_id)
        self.ctx.sessions.update(session.id, **self._session_params(params))
        return self._submit("retry", session.id, job_id, params, input_blob=source, owner=owner)

    def crop(self, req: UpdateCroppedAudio, owner: str | None = None) -> str:
        """The given audio becomes the session's current audio. Returns the session id."""
        session = self._require(req.session_id, owner) if req.session_id else None
        if session is not None and session.busy:
            raise Busy("Generation already in progress", session_id=session.id)
        upload = self._upload(req.audio_data)
        return self._set_current(session, upload, kind="crop", owner=owner)

    def cleanup(self, session_id: str, owner: str | None = None) -> None:
        """Free the session: cancel its job, forget its state. Its audio stays in GridFS
        until the retention sweep, so an accidental cleanup loses nothing at once."""
        session = self._require(session_id, owner)
        job_id = session.get("job_id")
        if session.busy and job_id:
            self.cancel_job(job_id)
        self.ctx.redis.delete(keys.upload(session_id))
        self.ctx.sessions.delete(session_id)

    def cancel_job(self, job_id: str) -> None:
        """Stop a job: dropped if still queued, stopped between model steps if running."""
        self.ctx.jobs.request_cancel(job_id)
        job = self.ctx.jobs.get(job_id)
        if job is not None and job.status == "queued" and self.ctx.queue.remove_waiting(job_id):
            lifecycle.canceled(self.ctx, job)

    def status(self, session_id: str, owner: str | None = None) -> dict[str, Any]:
        """What verify_session / request_progress_status / the poll route answer."""
        session = self.ctx.sessions.get(session_id)
        if session is not None and owner is not None and self.settings.api_keys \
                and session.get("owner") != owner:
            session = None
        if session is None:
            return {"session_id": session_id, "exists": False, "status": "missing",
                    "generation_in_progress": False, "progress": 0, "queue_position": None,
                    "error": None, "model_name": None, "version": 0}
        position = None
        job_id = session.get("job_id")
        if session.status == "queued" and job_id:
            position = self.ctx.queue.position(job_id).position
        return {"session_id": session_id, "exists": True, "status": session.status,
                "generation_in_progress": session.busy, "progress": session.progress,
                "queue_position": position, "error": session.text("error"),
                "model_name": session.text("model_name"), "version": session.version}

    def queue_status(self, job_id: str, session_id: str) -> dict[str, Any]:
        """The ``queue_status`` payload for a job."""
        job = self.ctx.jobs.get(job_id)
        pos = self.ctx.queue.position(job_id)
        state = {"queued": "queued", "running": "processing"}.get(job.status if job else "", "ready")
        if state == "queued":
            message = f"Position {pos.position} in queue" if pos.position > 1 else "Next in queue"
        elif state == "processing":
            message = "Generating"
        else:
            message = "Ready"
        return {"message": message, "position": pos.position, "total_queued": pos.total_queued,
                "estimated_seconds": pos.estimated_seconds, "status": state, "session_id": session_id}

    # ------------------------------------------------------------ chunked restore
    def begin_restore(self, params: GenerationParams, owner: str | None = None) -> tuple[str, int]:
        """Start a chunked upload into a new session. Returns (session id, chunk size)."""
        given = params.given()
        if "model_name" in given or "prompt_duration" in given:
            self._resolve(given, None)
        session = self.ctx.sessions.create(owner=owner or "", **{k: v for k, v in given.items()})
        key = keys.upload(session.id)
        with self.ctx.redis.pipeline() as p:
            p.hset(key, "meta", json.dumps({"started": time.time()}))
            p.expire(key, self.settings.upload_ttl_s)
            p.execute()
        return session.id, self.settings.chunk_size

    def add_chunk(self, session_id: str, index: int, total: int, chunk: str, is_last: bool,
                  owner: str | None = None) -> tuple[int, list[int] | None, bool]:
        """Store one fragment. Returns (received count, missing indexes or None, complete)."""
        session = self.ctx.sessions.get(session_id)
        if session is not None:
            self.check_owner(session, owner)
        key = keys.upload(session_id)
        if not self.ctx.redis.exists(key):
            raise SessionNotFound("no chunked upload in progress for this session; send begin_restore_audio",
                                  session_id=session_id)
        if index >= total:
            raise InvalidRequest(f"chunk_index {index} is outside 0..{total - 1}", session_id=session_id)
        with self.ctx.redis.pipeline() as p:
            p.hset(key, str(index), chunk)
            p.hstrlen(key, "meta")
            p.execute()
        lengths = sum(self.ctx.redis.hstrlen(key, str(i)) for i in range(total))
        if lengths > self.settings.max_payload_bytes:
            self.ctx.redis.delete(key)
            raise TooLarge("the upload is over the size limit", session_id=session_id)
        have = {int(k) for k in self.ctx.redis.hkeys(key) if k.isdigit()}
        received = len(have & set(range(total)))
        if not is_last and received < total:
            return received, None, False
        missing = sorted(set(range(total)) - have)
        if missing:
            return received, missing, False
        # Chunk handlers run concurrently: exactly one of them assembles the upload.
        if not self.ctx.redis.hsetnx(key, "assembling", "1"):
            return received, None, False
        try:
            parts = self.ctx.redis.hmget(key, [str(i) for i in range(total)])
            upload = self._upload("".join(parts))
            session = self.ctx.sessions.require(session_id)
            if session.busy:
                raise Busy("Generation already in progress", session_id=session_id)
            self._set_current(session, upload, kind="upload")
        finally:
            self.ctx.redis.delete(key)  # done, or refused: either way the upload is over
        return received, [], True

    # ------------------------------------------------------------ internals
    @staticmethod
    def _session_params(params: dict[str, Any]) -> dict[str, Any]:
        return {k: params[k] for k in _PARAM_FIELDS}

    def _set_current(self, session: Session | None, upload: Upload, kind: str, owner: str | None = None) -> str:
        session_id = session.id if session else new_session_id()
        if session is None:
            self.ctx.sessions.create(session_id, owner=owner or "")
        version = (session.version if session else 0) + 1
        a = upload.audio
        blob = self.ctx.blobs.put(upload.wav, session_id=session_id, kind=kind, version=version,
                                  sample_rate=a.sample_rate, channels=a.channels, subtype=a.subtype,
                                  duration=a.duration)
        self.ctx.sessions.update(session_id, current_blob=blob, version=version, error="", error_code="",
                                 current_format=format_field(a.sample_rate, a.channels, a.subtype))
        return session_id

    def _submit(self, kind: str, session_id: str, job_id: str, params: dict[str, Any], *,
                upload: Upload | None = None, input_blob: str | None = None, owner: str | None = None,
                hold: bool = False) -> Accepted:
        """Store what the job needs and queue it. With a fresh upload, only the small
        prompt window is stored before queueing; the full file is written while the
        model runs (the worker needs it only to assemble the result)."""
        try:
            job_params: dict[str, Any] = {k: params[k] for k in _PARAM_FIELDS if k != "model_name"}
            if upload is not None:
                a = upload.audio
                job_params.update(sample_rate=a.sample_rate, channels=a.channels, subtype=a.subtype)
                prompt_wav = self.offload(self._prompt_wav, upload, kind, float(params["prompt_duration"]))
                # Redis, not GridFS: the worker reads it at once, and nothing keeps it after the job.
                self.ctx.redis_bytes.set(keys.prompt(job_id), prompt_wav, ex=PROMPT_TTL_S)
                input_blob = self.ctx.blobs.new_id()
                # Holding the upload here lets the worker send back only the new audio.
                if hold and kind != "bang" and self.held.put(job_id, upload.wav):
                    job_params["splice_handoff"] = True
            else:
                job_params.update(self._stored_format(session_id, input_blob or ""))
            job = Job(id=job_id, kind=kind, session_id=session_id, model=params["model_name"],
                      params=job_params, input_blob=input_blob, owner=owner)
            self.ctx.queue.enqueue(job, limit=self.settings.max_queue)
        except Exception:
            self.held.discard(job_id)
            if kind == "bang":  # the session was made for this job alone
                self.ctx.sessions.delete(session_id)
            else:
                self.ctx.sessions.update_if_job(session_id, job_id, status="idle", progress=0)
            raise
        if upload is not None:
            self.spawn(self._store_input, upload, session_id, job, input_blob)
        log.info("job queued", session_id=session_id, job_id=job_id, kind=kind, model=params["model_name"])
        return Accepted(session_id, job_id, kind, self.ctx.queue.position(job_id))

    def _stored_format(self, session_id: str, blob_id: str) -> dict[str, Any]:
        """Rate, channels and sample format of a stored version (a result may still be on
        its way into GridFS, so the session's own record is asked first)."""
        session = self.ctx.sessions.get(session_id)
        fmt = parse_format(session.get("current_format")) if session else None
        if fmt is not None and session.get("current_blob") == blob_id:
            return {"sample_rate": fmt[0], "channels": fmt[1], "subtype": fmt[2]}
        info = self.ctx.blobs.info(blob_id)
        if info is None:
            raise SessionNotFound("the session's stored audio is gone (retention)", session_id=session_id)
        m = info.metadata
        return {"sample_rate": m["sample_rate"], "channels": m["channels"], "subtype": m.get("subtype", "PCM_16")}

    @staticmethod
    def _prompt_wav(upload: Upload, kind: str, seconds: float) -> bytes:
        a = upload.audio
        window = prompt_window(a.samples, a.sample_rate, kind, seconds)
        return audio.encode_wav(model_prompt(window, a.sample_rate, MODEL_RATE), MODEL_RATE, "FLOAT")

    def _store_input(self, upload: Upload, session_id: str, job: Job, blob_id: str) -> None:
        a = upload.audio
        try:
            self.ctx.blobs.put(upload.wav, session_id=session_id, kind="input", blob_id=blob_id, job_id=job.id,
                               sample_rate=a.sample_rate, channels=a.channels, subtype=a.subtype,
                               duration=a.duration)
        except Exception as exc:
            log.exception("storing input failed", session_id=session_id, job_id=job.id)
            self.ctx.jobs.request_cancel(job.id)
            lifecycle.failed(self.ctx, job, Internal(f"could not store the input audio: {type(exc).__name__}",
                                                     session_id=session_id))

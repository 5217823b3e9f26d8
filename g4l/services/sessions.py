"""Bang, continue, retry, crop, cleanup, status and chunked restore: the device
operations, whatever protocol they arrive by.

Every operation validates everything first (payload, audio, model, session state) and
only then writes, so a bad request changes nothing. Every one takes the
:class:`~g4l.services.auth.Caller`: its owner is recorded on what it creates, rate
limits count per owner, and with API keys on another key's session does not exist.

Why one file of over 400 lines: every operation shares the validate-then-write steps of
:class:`SessionService` (caller, rate limit, session state, queueing) and the session store's
discipline; the history and text-to-audio services are their own modules.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
import pymongo.errors

from g4l import keys
from g4l.context import Context
from g4l.errors import (
    Busy,
    Internal,
    InvalidRequest,
    NotFound,
    NothingToRetry,
    NotReady,
    QueueFull,
    RateLimited,
    SessionNotFound,
    StoreUnavailable,
    TooLarge,
)
from g4l.jobs import delivery, lifecycle
from g4l.jobs.kinds import KindName
from g4l.jobs.queue import QueuePosition
from g4l.jobs.records import Job, JobStatus, new_job_id
from g4l.jobs.spec import Assembly, AudioFormat, GenerationSpec, prompt_wav
from g4l.log import get_logger
from g4l.services import snapshot
from g4l.services.auth import Caller
from g4l.services.held_inputs import HeldInputs
from g4l.services.models import ModelCatalog
from g4l.services.ratelimit import RateLimiter
from g4l.services.snapshot import SessionSnapshot
from g4l.services.specs import SessionParams, SpecResolver
from g4l.services.upload_quota import UploadQuota
from g4l.services.uploads import Offload, Upload, decode_stored, decode_upload
from g4l.store.history import Operation, VersionRecord
from g4l.store.retention import prune_history
from g4l.store.sessions import Session, SessionStatus, format_field, new_session_id, parse_format
from plugin_protocol.payloads import (
    ContinueMusicRequest,
    GenerationParams,
    ProcessAudioRequest,
    RetryMusicRequest,
    UpdateCroppedAudio,
)

log = get_logger(__name__)

#: A queued job's prompt window waits this long in Redis; a job started later (a long
#: queue, a requeue) cuts its prompt from the stored input instead.
PROMPT_TTL_S = 3600


@dataclass(frozen=True)
class Accepted:
    """A generation request that is now queued."""

    session_id: str
    job_id: str
    kind: KindName
    queue: QueuePosition
    #: The seed the generation uses (the client's, or the one the server picked).
    seed: int | None = None
    #: Seconds the model produces, its prompt included.
    output_seconds: float = 0.0


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
        self.specs = SpecResolver(ctx.settings)
        self._limiter = RateLimiter(ctx.redis)
        #: Continue uploads kept until their result is sent (see :mod:`g4l.jobs.handoff`).
        self.held = HeldInputs(self.settings.held_inputs_mb * 1024 * 1024)
        self.upload_quota = UploadQuota(ctx.redis, self.settings)  # bytes per client in open chunked uploads

    # ------------------------------------------------------------ access and limits
    def find(self, session_id: str, caller: Caller) -> Session | None:
        """The session, or None when there is none the caller may see."""
        session = self.ctx.sessions.get(session_id) if keys.valid_id(session_id) else None
        if session is None or not caller.can_see(session.get("owner")):
            return None
        return session

    def require(self, session_id: str, caller: Caller) -> Session:
        """The session. :raises SessionNotFound: none, or another key's."""
        session = self.find(session_id, caller)
        if session is None:
            if not keys.valid_id(session_id):
                raise SessionNotFound("no session with that id (ids are up to 64 of A-Z a-z 0-9 _ -)")
            raise SessionNotFound(f"no session {session_id} (it ended or expired)", session_id=session_id)
        return session

    def check_rate(self, caller: Caller) -> None:
        """At most ``rate_limit_per_minute`` generation requests per caller (its owner
        id) in any 60 s, Socket.IO and HTTP alike (:mod:`g4l.services.ratelimit`)."""
        limit = self.settings.rate_limit_per_minute
        if limit <= 0:
            return
        decision = self._limiter.take(caller.owner, limit)
        if not decision.allowed:
            retry_after = decision.retry_after
            raise RateLimited(f"too many generation requests: {limit} a minute; retry in {retry_after} s",
                              retry_after=retry_after)

    def check_capacity(self, model: str) -> None:
        """Room in the queue, and a worker able to load ``model``.
        :raises QueueFull, ModelUnavailable:"""
        ModelCatalog(self.ctx).require_available(model)
        if self.ctx.queue.depth() >= self.settings.max_queue:
            raise QueueFull(f"the queue is full ({self.settings.max_queue} jobs); try again shortly")

    @staticmethod
    def params(session: Session | None) -> SessionParams | None:
        """The parameters a session remembers (None before its first request named any)."""
        raw = session.get("params") if session is not None else None
        return SessionParams.model_validate_json(raw) if raw else None

    def _upload(self, text: str) -> Upload:
        return decode_upload(text, self.settings, self.offload)

    # ------------------------------------------------------------ operations
    def bang(self, req: ProcessAudioRequest, caller: Caller) -> Accepted:
        """New session continuing the FIRST ``prompt_duration`` seconds of the audio."""
        params = self.specs.session_params(req.given(), None)
        output_s = self.specs.output_seconds(req.duration)
        self.check_capacity(params.model)
        upload = self._upload(req.audio_data)
        self.check_rate(caller)
        session_id, job_id = new_session_id(), new_job_id()
        self.ctx.sessions.create(session_id, status=SessionStatus.QUEUED, job_id=job_id, owner=caller.owner,
                                 params=params.model_dump_json())
        return self._submit(KindName.BANG, session_id, job_id, params, caller, upload=upload, new_session=True,
                            seed=req.seed, output_seconds=output_s)

    def continue_(self, req: ContinueMusicRequest, caller: Caller, *, hold_input: bool = False) -> Accepted:
        """Continue the LAST ``prompt_duration`` seconds of the given (or stored) audio.

        :param hold_input: keep the upload in this process until the result is sent, so
            only the new audio comes back through Redis: for a caller whose result this
            node delivers (a socket here), not for one that polls for it."""
        session = self.require(req.session_id, caller) if req.session_id else None
        if session is not None and session.busy:
            raise Busy("Generation already in progress", session_id=session.id)
        params = self.specs.session_params(req.given(), self.params(session))
        output_s = self.specs.output_seconds(req.duration)
        if req.audio_data is None and (session is None or not session.get("current_blob")):
            raise InvalidRequest("no audio: send audio_data (this session has none stored yet)",
                                 session_id=req.session_id)
        self.check_capacity(params.model)
        upload = self._upload(req.audio_data) if req.audio_data is not None else None
        self.check_rate(caller)
        job_id = new_job_id()
        if session is None:
            session_id = new_session_id()
            self.ctx.sessions.create(session_id, status=SessionStatus.QUEUED, job_id=job_id, owner=caller.owner,
                                     params=params.model_dump_json())
        else:
            session_id = session.id
            self.ctx.sessions.begin_job(session_id, job_id)
            self.ctx.sessions.update(session_id, params=params.model_dump_json())
        if upload is not None:
            # The continue builds on the session's current version, from the file the client sent.
            return self._submit(KindName.CONTINUE, session_id, job_id, params, caller, upload=upload, hold=hold_input,
                                new_session=session is None, seed=req.seed, output_seconds=output_s,
                                parent=session.current_version if session is not None else None)
        assert session is not None
        return self._submit(KindName.CONTINUE, session_id, job_id, params, caller, input_blob=session["current_blob"],
                            seed=req.seed, output_seconds=output_s, parent=session.current_version)

    def retry(self, req: RetryMusicRequest, caller: Caller) -> Accepted:
        """Redo the continue that made the current version (or its nearest ancestor made by
        a continue or retry) from the input it used. The new version is that one's sibling:
        undo from it goes where undo from the retried version went."""
        session = self.require(req.session_id, caller)
        if session.busy:
            raise Busy("Generation already in progress", session_id=session.id)
        target = self.ctx.sessions.history(session.id).retry_target()
        if target is None or not target.input_blob:
            raise NothingToRetry("nothing to retry: no continue made this session's current audio",
                                 session_id=session.id)
        source = target.input_blob
        params = self.specs.session_params(req.given(), self.params(session))
        output_s = self.specs.output_seconds(req.duration)
        self.check_capacity(params.model)
        self.check_rate(caller)
        job_id = new_job_id()
        self.ctx.sessions.begin_job(session.id, job_id)
        self.ctx.sessions.update(session.id, params=params.model_dump_json())
        return self._submit(KindName.RETRY, session.id, job_id, params, caller, input_blob=source, seed=req.seed,
                            output_seconds=output_s, parent=target.parent)

    def crop(self, req: UpdateCroppedAudio, caller: Caller) -> str:
        """The given audio becomes the session's current audio. Returns the session id."""
        session = self.require(req.session_id, caller) if req.session_id else None
        if session is not None and session.busy:
            raise Busy("Generation already in progress", session_id=session.id)
        upload = self._upload(req.audio_data)
        return self._set_current(session, upload, kind="crop", owner=caller.owner)

    def import_job(self, session_id: str | None, job_id: str, caller: Caller) -> str:
        """A finished text-to-audio job's result becomes the session's current audio: a new
        version (operation ``generate``, with the job's parameters) that continue and retry
        act on; without ``session_id`` a new session holding it. Returns the session id.
        :raises NotFound: no such job of the caller's. :raises NotReady: not a finished
        ``generate`` or ``text_to_audio`` job. :raises Busy: the session has a job queued or running."""
        session = self.require(session_id, caller) if session_id else None
        if session is not None and session.busy:
            raise Busy("Generation already in progress", session_id=session.id)
        job = self.ctx.jobs.get(job_id) if keys.valid_id(job_id) else None
        if job is None or not caller.can_see(job.owner):
            raise NotFound(f"no job {job_id}" if keys.valid_id(job_id) else "no job with that id")
        if job.kind not in (KindName.GENERATE, KindName.TEXT_TO_AUDIO) or job.status is not JobStatus.COMPLETED \
                or not job.output_blob:  # a session-free job's own result (MusicGen's or jerry's)
            raise NotReady(f"job {job.id} is a {job.kind} job, {job.status}: only a completed generate or "
                           "text_to_audio job's audio can be imported", session_id=session_id)
        try:
            wav = self.ctx.blobs.get(job.output_blob)
        except KeyError:
            raise NotFound(f"the audio of job {job.id} is gone (retention)", session_id=session_id) from None
        upload = decode_stored(wav, self.settings, self.offload)
        return self._set_current(session, upload, kind="generate", owner=caller.owner,
                                 params={**job.spec.summary(), "job_id": job.id})

    def cleanup(self, session_id: str, caller: Caller) -> None:
        """Free the session: cancel its job, forget its state. Its audio stays in GridFS
        until the retention sweep, so an accidental cleanup loses nothing at once."""
        session = self.require(session_id, caller)
        job_id = session.get("job_id")
        if session.busy and job_id:
            lifecycle.request_cancel(self.ctx, job_id)
        self.ctx.redis.delete(keys.upload(session_id))
        self.ctx.sessions.delete(session_id)

    # ------------------------------------------------------------ status
    def snapshot(self, session_id: str, caller: Caller) -> SessionSnapshot:
        """The one view of a session that every status answer, poll and reconnect formats."""
        return snapshot.take(self.ctx, session_id, self.find(session_id, caller), self.queue_status)

    def status(self, session_id: str, caller: Caller) -> dict[str, Any]:
        """What verify_session / request_progress_status answer (``session_status``)."""
        return self.snapshot(session_id, caller).status_payload()

    def current_audio(self, snap: SessionSnapshot) -> bytes | None:
        """The snapshot's session's current audio: its last job's hand-off while GridFS is
        still writing it (joined to the upload this node holds), else the stored file."""
        if snap.session is None:
            return None
        return delivery.session_audio(self.ctx, snap.session, held=self.held.get, offload=self.offload)

    def queue_status(self, job_id: str, session_id: str, position: QueuePosition | None = None) -> dict[str, Any]:
        """The ``queue_status`` payload for a job (``position``: already read, for a job
        known to be waiting)."""
        if position is not None:
            return {"message": f"Position {position.position} in queue" if position.position > 1 else "Next in queue",
                    "position": position.position, "total_queued": position.total_queued,
                    "estimated_seconds": position.estimated_seconds, "status": "queued", "session_id": session_id}
        job = self.ctx.jobs.get(job_id)
        pos = self.ctx.queue.position(job_id)
        if job is not None and job.status is JobStatus.QUEUED:
            state = "queued"
            message = f"Position {pos.position} in queue" if pos.position > 1 else "Next in queue"
        elif job is not None and job.status is JobStatus.RUNNING:
            state, message = "processing", "Generating"
        else:
            state, message = "ready", "Ready"
        return {"message": message, "position": pos.position, "total_queued": pos.total_queued,
                "estimated_seconds": pos.estimated_seconds, "status": state, "session_id": session_id}

    def ready_status(self, session_id: str) -> dict[str, Any]:
        """``queue_status`` once a result has been sent."""
        return {"message": "Ready", "position": 0, "total_queued": self.ctx.queue.depth(), "estimated_seconds": 0,
                "status": "ready", "session_id": session_id}

    def missed_result(self, session: Session) -> Job | None:
        """The finished job of ``session`` (as just read) whose result no socket has
        received yet (the client was away when it finished), or None: a returning client
        gets it again."""
        if session.busy:
            return None
        job_id = session.get("job_id")
        if not job_id or not session.get("last_output_blob") or session.get("delivered") == job_id:
            return None
        if session.get("current_blob") != session.get("last_output_blob"):
            return None  # undone or replaced since (a move, a crop): the client gets what is current
        job = self.ctx.jobs.get(job_id)
        if job is None or job.status is not JobStatus.COMPLETED or not job.output_blob:
            return None
        return job

    def mark_delivered(self, session_id: str, job_id: str) -> None:
        """A socket has the whole result (the worker's GridFS write waits for this)."""
        self.ctx.sessions.update_if_job(session_id, job_id, delivered=job_id)

    # ------------------------------------------------------------ chunked restore
    def begin_restore(self, params: GenerationParams, caller: Caller) -> tuple[str, int]:
        """Start a chunked upload into a new session. Returns (session id, chunk size)."""
        self.upload_quota.admit(caller.owner)
        given = params.given()
        fields: dict[str, Any] = {"owner": caller.owner}
        if given:
            fields["params"] = self.specs.session_params(given, None).model_dump_json()
        session = self.ctx.sessions.create(**fields)
        key = keys.upload(session.id)
        with self.ctx.redis.pipeline() as p:
            p.hset(key, "meta", json.dumps({"started": time.time()}))
            p.expire(key, self.settings.upload_ttl_s)
            p.execute()
        return session.id, self.settings.chunk_size

    def add_chunk(self, session_id: str, index: int, total: int, chunk: str, is_last: bool,
                  caller: Caller) -> tuple[int, list[int] | None, bool]:
        """Store one fragment. Returns (received count, missing indexes or None, complete)."""
        if self.ctx.sessions.get(session_id) is not None:
            self.require(session_id, caller)
        key = keys.upload(session_id)
        if not self.ctx.redis.exists(key):
            raise SessionNotFound("no chunked upload in progress for this session; send begin_restore_audio",
                                  session_id=session_id)
        if index >= total:
            raise InvalidRequest(f"chunk_index {index} is outside 0..{total - 1}", session_id=session_id)
        self.upload_quota.reserve(caller.owner, session_id, index, chunk)
        with self.ctx.redis.pipeline() as p:
            p.hset(key, str(index), chunk)
            p.hkeys(key)
            fields = p.execute()[1]
        have = {int(k) for k in fields if k.isdigit()}
        # One round trip over the chunks that did arrive (never over what total_chunks claims).
        with self.ctx.redis.pipeline(transaction=False) as p:
            for i in have:
                p.hstrlen(key, str(i))
            lengths = sum(p.execute())
        if lengths > self.settings.max_payload_bytes:
            self.ctx.redis.delete(key)
            raise TooLarge("the upload is over the size limit", session_id=session_id)
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
            self.upload_quota.release(caller.owner, session_id)
        return received, [], True

    # ------------------------------------------------------------ for other services (terry)
    def new_session_holding(self, upload: Upload, caller: Caller) -> str:
        """A new session whose first version (operation ``upload``) is ``upload``: what a
        transform without a session starts from, so its undo has somewhere to go."""
        return self._set_current(None, upload, kind="upload", owner=caller.owner)

    def store_input_later(self, upload: Upload, job: Job) -> None:
        """Store a queued job's uploaded input (``job.spec.input_blob``) while it waits or
        runs; a failed write fails the job."""
        self.spawn(self._store_input, upload, job)

    def stored_format(self, session_id: str, blob_id: str) -> AudioFormat:
        """Rate, channels and sample format of a stored version of the session."""
        return self._stored_format(session_id, blob_id)

    # ------------------------------------------------------------ internals
    def _set_current(self, session: Session | None, upload: Upload, kind: str, owner: str | None = None,
                     params: dict[str, Any] | None = None) -> str:
        """The upload becomes a new version of the session (a new session without one),
        made from its current version."""
        session_id = session.id if session else new_session_id()
        if session is None:
            self.ctx.sessions.create(session_id, owner=owner or "")
        version = self.ctx.sessions.allocate_version(session_id) or 1
        parent = session.current_version if session is not None else None
        a = upload.audio
        blob = self.ctx.blobs.put(upload.wav, session_id=session_id, kind=kind, version=version,
                                  parent_version=parent, operation=kind, sample_rate=a.sample_rate,
                                  channels=a.channels, subtype=a.subtype, duration=a.duration)
        record = VersionRecord(version=version, parent=parent, operation=Operation(kind), blob=blob,
                               format=format_field(a.sample_rate, a.channels, a.subtype),
                               duration=round(a.duration, 4), created=time.time(), params=params or {})
        state = self.ctx.sessions.append_version(session_id, record, error="", error_code="")
        if state != "OK":  # a job started meanwhile, or the session ended: nothing changes
            self.ctx.blobs.delete(blob)
            if state == "BUSY":
                raise Busy("Generation already in progress", session_id=session_id)
            raise SessionNotFound(f"no session {session_id} (it ended or expired)", session_id=session_id)
        prune_history(self.ctx.blobs, self.ctx.sessions, session_id)
        return session_id

    def _submit(self, kind: KindName, session_id: str, job_id: str, params: SessionParams, caller: Caller, *,
                upload: Upload | None = None, input_blob: str | None = None, hold: bool = False,
                new_session: bool = False, seed: int | None = None, output_seconds: float | None = None,
                parent: int | None = None) -> Accepted:
        """Store what the job needs and queue it. With a fresh upload, only the small
        prompt window is stored before queueing; the full file is written while the
        model runs (the worker needs it only to assemble the result)."""
        held = False
        try:
            if upload is not None:
                a = upload.audio
                fmt = AudioFormat(sample_rate=a.sample_rate, channels=a.channels, subtype=a.subtype)
                input_blob = self.ctx.blobs.new_id()
                spec = self.specs.session_spec(kind, params, fmt, input_blob, seed, output_seconds)
                window = self.offload(prompt_wav, spec, a.samples, a.sample_rate)
                # Redis, not GridFS: the worker reads it at once, and nothing keeps it after the job.
                self.ctx.redis_bytes.set(keys.prompt(job_id), window, ex=PROMPT_TTL_S)
                # Holding the upload here lets the worker send back only the new audio.
                held = hold and spec.assembly is Assembly.SPLICE and self.held.put(job_id, upload.wav)
            else:
                assert input_blob is not None
                spec = self.specs.session_spec(kind, params, self._stored_format(session_id, input_blob),
                                               input_blob, seed, output_seconds)
            job = Job(id=job_id, kind=kind, session_id=session_id, spec=spec, owner=caller.owner, hold_input=held,
                      parent_version=parent)
            self.ctx.sessions.update(session_id, seed=spec.seed)
            self.ctx.queue.enqueue(job, limit=self.settings.max_queue)
        except Exception:
            self.held.discard(job_id)
            if new_session:  # the session was made for this job alone
                self.ctx.sessions.delete(session_id)
            else:
                self.ctx.sessions.update_if_job(session_id, job_id, status=SessionStatus.IDLE, progress=0)
            raise
        if upload is not None:
            self.spawn(self._store_input, upload, job)
        log.info("job queued", session_id=session_id, job_id=job_id, kind=kind, model=spec.model, seed=spec.seed)
        return Accepted(session_id, job_id, kind, self.ctx.queue.position(job_id), spec.seed, spec.output_seconds)

    def _stored_format(self, session_id: str, blob_id: str) -> AudioFormat:
        """Rate, channels and sample format of a stored version (a result may still be on
        its way into GridFS, so the session's own record is asked first)."""
        session = self.ctx.sessions.get(session_id)
        fmt = parse_format(session.get("current_format")) if session else None
        if fmt is not None and session is not None and session.get("current_blob") == blob_id:
            return AudioFormat(sample_rate=fmt[0], channels=fmt[1], subtype=fmt[2])
        info = self.ctx.blobs.info(blob_id)
        if info is None:
            raise SessionNotFound("the session's stored audio is gone (retention)", session_id=session_id)
        m = info.metadata
        return AudioFormat(sample_rate=m["sample_rate"], channels=m["channels"], subtype=m.get("subtype", "PCM_16"))

    def _store_input(self, upload: Upload, job: Job) -> None:
        a = upload.audio
        spec: GenerationSpec = job.spec
        assert spec.input_blob is not None
        try:
            self.ctx.blobs.put(upload.wav, session_id=job.session_id, kind="input", blob_id=spec.input_blob,
                               job_id=job.id, sample_rate=a.sample_rate, channels=a.channels, subtype=a.subtype,
                               duration=a.duration)
        except Exception as exc:
            log.exception("storing input failed", session_id=job.session_id, job_id=job.id)
            self.ctx.jobs.flag_cancel(job.id)
            error = (StoreUnavailable("the input audio could not be stored: the audio store did not answer; "
                                      "please send the request again", session_id=job.session_id)
                     if isinstance(exc, pymongo.errors.PyMongoError)
                     else Internal(f"could not store the input audio: {type(exc).__name__}", session_id=job.session_id))
            lifecycle.fail(self.ctx, job, error)

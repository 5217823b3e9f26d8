"""One-shot live streams (the realtime HLS API): a text becomes one generation that is
played over HLS while it is made, then kept as a WAV and an MP4.

``start`` queues a ``generate`` job and opens a live stream of kind :data:`ONESHOT` on it
at once (the player attaches before there is audio and hears silence until the first
audio exists); the packager appends the job's audio when it comes. The stream's id is the
job's id, so ``/api/v1/jobs/<id>`` shows the same generation. The MP4 is encoded from the
WAV on first request and kept in GridFS beside it.

With API keys on, a stream belongs to its key (another key gets 404), and starting one
takes the same rate limit and queue limit as any generation; one key (or address) has at
most :data:`MAX_PER_OWNER` streams open (409 ``STATIONS_FULL`` beyond). A one-shot whose
generation has ended stops after ``ONESHOT_LINGER_S`` without a listener
(:mod:`g4l.services.idle_streams`), not the general idle timeout.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import gevent

from g4l import keys
from g4l.context import Context
from g4l.errors import Internal, InvalidRequest, NotFound, NotReady, StationsFull
from g4l.jobs import lifecycle, partials
from g4l.jobs.records import Job, JobStatus, new_job_id
from g4l.log import get_logger
from g4l.media import ENCODE_TIMEOUT_S, MediaError, wav_to_mp4
from g4l.services.auth import Caller
from g4l.services.jobs import JobService
from g4l.services.listen import ONESHOT, ListenService, links, new_token

log = get_logger(__name__)

#: The realtime API's languages. MusicGen's text encoder (T5) was trained on English
#: descriptions: Russian and Kazakh texts are passed as given and steer it less.
LANGUAGES = ("en", "ru", "kk")
MODES = ("dynamic",)
#: The MP4 lock outlives the longest encode, so two processes never encode one result.
MP4_LOCK_S = ENCODE_TIMEOUT_S + 60
#: One-shot streams one key (or address) may have open at once.
MAX_PER_OWNER = 4
# Record the MP4 only while the stream still exists (a cleanup may have run meanwhile).
_KEEP_MP4 = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'mp4_blob', ARGV[1])
return 1
"""
# Release a lock only if it is still ours.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

PROCESSING, READY, FAILED = "processing", "ready", "failed"


@dataclass(frozen=True)
class OneShot:
    """A one-shot stream and its generation (``job`` is None once the record expired)."""

    stream_id: str
    info: dict[str, str]
    job: Job | None

    @property
    def status(self) -> str:
        """``processing`` while the job is queued or running, ``ready`` once its audio is
        stored, ``failed`` for a failed, canceled or expired job."""
        if self.job is None:
            return FAILED
        if self.job.status is JobStatus.COMPLETED and self.job.output_blob:
            return READY
        return PROCESSING if self.job.status.pending else FAILED

    @property
    def error(self) -> dict[str, str] | None:
        if self.status != FAILED:
            return None
        if self.job is None:
            return {"code": "NOT_FOUND", "message": "the generation's record expired"}
        if self.job.status is JobStatus.CANCELED:
            return {"code": "CANCELED", "message": "the generation was canceled (POST /api/cleanup, or a job cancel)"}
        return {"code": self.job.error_code or "GENERATION_FAILED", "message": self.job.error or "generation failed"}


class OneShotStreams:
    """Start, describe and clean up one-shot streams."""

    def __init__(self, ctx: Context, jobs: JobService) -> None:
        self.ctx = ctx
        self.jobs = jobs
        self.listen = ListenService(ctx)
        self._keep_mp4 = ctx.redis.register_script(_KEEP_MP4)
        self._unlock = ctx.redis.register_script(_UNLOCK)

    def start(self, caller: Caller, *, text: str, language: str = "en", mode: str = "dynamic",
              duration: float | None = None, model: str | None = None) -> dict[str, Any]:
        """Queue the generation of ``text`` and open its live stream.

        :returns: ``{session_id, playlist_url, page_url, status}`` (relative URLs).
        :raises InvalidRequest: empty text, an unsupported language or mode.
        """
        text = " ".join((text or "").split())
        if not text:
            raise InvalidRequest("text is empty: describe the music to generate")
        if language not in LANGUAGES:
            raise InvalidRequest(f"unsupported language {language[:20]!r}: use one of {', '.join(LANGUAGES)}")
        if mode not in MODES:
            raise InvalidRequest(f"unsupported mode {mode[:20]!r}: use one of {', '.join(MODES)}")
        seconds = self.ctx.settings.stream_seconds if duration is None else duration
        if len(self.open_streams(caller)) >= MAX_PER_OWNER:
            raise StationsFull(f"this key already has {MAX_PER_OWNER} realtime streams open; "
                               "clean one up (POST /api/cleanup) first")
        # Streamed generation: the worker decides whether to stream when it starts the job,
        # which may be before the stream below is registered.
        stream_id = new_job_id()
        partials.want(self.ctx.redis, stream_id, ttl_s=3600)
        self.jobs.generate(caller, duration=seconds, prompt=text, model=model, job_id=stream_id)
        token = new_token()
        with self.ctx.redis.pipeline() as p:
            p.hset(keys.oneshot(stream_id), mapping={
                "job_id": stream_id, "token": token, "owner": caller.owner or "", "text": text,
                "language": language, "mode": mode, "created": time.time(), "mp4_blob": ""})
            p.expire(keys.oneshot(stream_id), self.ctx.settings.retention_seconds)
            p.sadd(keys.owner_oneshots(caller.owner or ""), stream_id)
            p.expire(keys.owner_oneshots(caller.owner or ""), self.ctx.settings.retention_seconds)
            p.execute()
        self.listen.open_stream(token, ONESHOT, stream_id)
        log.info("one-shot stream started", job_id=stream_id, stream=token[:8], language=language,
                 seconds=seconds)
        return {"session_id": stream_id, **links(token), "status": PROCESSING}

    def open_streams(self, caller: Caller) -> list[str]:
        """The caller's one-shots whose live stream still runs (stopped ones are pruned)."""
        owned = keys.owner_oneshots(caller.owner or "")
        running = []
        for stream_id in self.ctx.redis.smembers(owned):
            token = self.ctx.redis.hget(keys.oneshot(stream_id), "token") or ""
            if token and self.listen.resolve(token) is not None:
                running.append(stream_id)
            else:
                self.ctx.redis.srem(owned, stream_id)
        return running

    def get(self, caller: Caller, stream_id: str) -> OneShot:
        """The caller's stream. :raises NotFound: unknown, cleaned up, or another key's."""
        info = self.ctx.redis.hgetall(keys.oneshot(stream_id)) if keys.valid_id(stream_id) else {}
        if not info or not caller.can_see(info.get("owner") or None):
            raise NotFound(f"no stream session {stream_id}" if keys.valid_id(stream_id) else "no such stream session")
        return OneShot(stream_id, info, self.ctx.jobs.get(info.get("job_id") or stream_id))

    def links(self, shot: OneShot) -> dict[str, str]:
        return links(shot.info.get("token", ""))

    def wav_blob(self, caller: Caller, stream_id: str) -> str:
        """The finished WAV's blob id. :raises NotReady: still generating, or failed."""
        shot = self.get(caller, stream_id)
        if shot.status != READY or shot.job is None or not shot.job.output_blob:
            raise NotReady(f"stream session {stream_id} is {shot.status}: it has no finished audio yet")
        return shot.job.output_blob

    def mp4_blob(self, caller: Caller, stream_id: str) -> str:
        """The finished result as MP4 (AAC), encoded from the WAV on first request (one web
        process encodes, the others wait for it) and kept in GridFS.

        :raises NotReady: still generating, or failed. :raises Internal: ffmpeg failed.
        """
        wav_blob = self.wav_blob(caller, stream_id)
        key, lock = keys.oneshot(stream_id), keys.oneshot_mp4_lock(stream_id)
        r = self.ctx.redis
        token = secrets.token_hex(8)
        deadline = time.monotonic() + MP4_LOCK_S
        while True:
            blob = r.hget(key, "mp4_blob") or ""
            if blob and self.ctx.blobs.exists(blob):
                return blob
            if r.set(lock, token, nx=True, ex=MP4_LOCK_S):
                break
            if time.monotonic() > deadline:
                raise Internal("the MP4 is still being encoded; try again shortly")
            gevent.sleep(0.2)
        try:
            try:
                mp4 = wav_to_mp4(self.ctx.blobs.get(wav_blob))  # ffmpeg runs in its own process
            except MediaError as exc:
                log.error("one-shot mp4 encode failed", job_id=stream_id, error=str(exc))
                raise Internal("the MP4 could not be encoded; the WAV is available") from None
            blob = self.ctx.blobs.put(mp4, session_id="", kind="mp4", job_id=stream_id)
            if not self._keep_mp4(keys=[key], args=[blob]):  # cleaned up meanwhile: keep nothing
                self.ctx.blobs.delete(blob)
                raise NotFound(f"no stream session {stream_id}")
            log.info("one-shot mp4 encoded", job_id=stream_id, bytes=len(mp4))
            return blob
        finally:
            self._unlock(keys=[lock], args=[token])

    def cleanup(self, caller: Caller, stream_id: str) -> dict[str, Any]:
        """Stop the stream (its segments are deleted), cancel the generation if it is still
        running and drop the MP4. The WAV stays with its job (``/api/v1/jobs/<id>``) until
        retention, like every generation's audio; the stream id is unknown afterwards."""
        shot = self.get(caller, stream_id)
        canceled = False
        if shot.job is not None and shot.job.status.pending:
            lifecycle.request_cancel(self.ctx, shot.job.id)
            canceled = True
        if shot.info.get("token"):
            self.listen.stop(shot.info["token"], "cleanup")
        mp4 = shot.info.get("mp4_blob") or ""
        if mp4:
            self.ctx.blobs.delete(mp4)
        self.ctx.redis.delete(keys.oneshot(stream_id))
        self.ctx.redis.srem(keys.owner_oneshots(shot.info.get("owner") or ""), stream_id)
        log.info("one-shot stream cleaned up", job_id=stream_id, canceled=canceled)
        return {"session_id": stream_id, "status": "cleaned", "canceled": canceled}


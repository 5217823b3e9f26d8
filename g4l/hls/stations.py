"""Drives one running station from the packager: keeps its buffer ahead of the listeners.

Each tick: if the station's job in flight finished, its audio is appended to the stream
(crossfaded over the lead-in); if the buffer is below ``station_buffer_s`` and no job is
in flight, the next continuation is queued at background priority. Prompts rotate on the
station's own audio timeline: generation ``k`` covering ``[t, t + d)`` uses the prompt
scheduled at ``t``, and a generation is shortened to end on the next rotation boundary,
so the prompt changes on schedule (give or take a crossfade), not a whole generation late.
"""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Any

from g4l import audio, keys
from g4l.context import Context
from g4l.hls.stream import LiveStream
from g4l.jobs.records import Job, JobStatus
from g4l.log import get_logger
from g4l.services.listen import buffer_health
from g4l.services.station_history import StationHistory
from g4l.services.stations import StationService, prompt_for

log = get_logger(__name__)

#: The first stretch is short: listeners hear music sooner.
FIRST_SECONDS = 8.0
#: Never generate less than this to reach a rotation boundary (rotate a little early instead).
MIN_NEW_SECONDS = 4.0
MAX_ERRORS_KEPT = 10
MAX_ROTATIONS_KEPT = 50


class StationDriver:
    """Feeds the :class:`LiveStream` of station ``station_id``.

    :param ctx: stores and queue.
    :param station_id: the station.
    :param stream: its running stream.
    """

    def __init__(self, ctx: Context, station_id: str, stream: LiveStream) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.station_id = station_id
        self.stream = stream
        self.key = keys.station(station_id)
        self.stations = StationService(ctx)
        self.history = StationHistory(ctx)  # the dashboard's buffer plot
        self.log = log.bind(station_id=station_id, stream=stream.token[:8])
        self._lock = threading.Lock()
        self._backoff_until = 0.0
        self._failures = 0
        self._low_reported = False

    # ------------------------------------------------------------ resume
    def resume(self) -> None:
        """After a (re)start: replay the last generated stretch so the music goes on at
        once, and the next continuation joins it seamlessly."""
        st = self.ctx.redis.hgetall(self.key)
        blob_id = st.get("last_blob") or ""
        if not blob_id or st.get("status") != "running":
            return
        try:
            self._append_blob(blob_id)
            self.log.info("station resumed", generations=int(st.get("generations") or 0))
        except KeyError:
            self.log.warning("station's last audio is gone; starting afresh", blob_id=blob_id)
            self.ctx.redis.hset(self.key, "last_blob", "")

    # ------------------------------------------------------------ tick
    def tick(self) -> None:
        """Consume a finished job, then queue the next one when the buffer is low."""
        with self._lock:
            st = self.ctx.redis.hgetall(self.key)
            if st.get("status") != "running":
                return
            job_id = st.get("job_id") or ""
            if job_id:
                job = self.ctx.jobs.get(job_id)
                if job is None:
                    self._clear_job(job_id)
                elif job.status is JobStatus.COMPLETED:
                    self._consume(st, job)
                    self._failures = 0
                elif job.status.final:
                    if self._clear_job(job_id) and job.status is JobStatus.FAILED:
                        self._record_error(st, job.error or "generation failed", job.error_code or "")
                else:
                    return  # queued or running
                st = self.ctx.redis.hgetall(self.key)
                if st.get("job_id"):
                    return
            self._report_buffer()
            if self.stream.buffer.buffered_seconds < self.settings.station_buffer_s \
                    and time.monotonic() >= self._backoff_until:
                self._enqueue(st)

    def _clear_job(self, job_id: str) -> bool:
        """Forget ``job_id`` unless another job replaced it meanwhile."""
        if self.ctx.redis.hget(self.key, "job_id") != job_id:
            return False
        self.ctx.redis.hset(self.key, "job_id", "")
        return True

    def _record_error(self, st: dict[str, str], message: str, code: str) -> None:
        self._failures += 1
        self._backoff_until = time.monotonic() + min(60.0, 2.0 ** self._failures)
        errors = json.loads(st.get("errors") or "[]")
        errors.append({"at": time.time(), "message": message[:300], "code": code})
        self.ctx.redis.hset(self.key, "errors", json.dumps(errors[-MAX_ERRORS_KEPT:]))
        self.log.warning("station generation failed", error=message[:300], code=code, failures=self._failures)

    def _report_buffer(self) -> None:
        low = self.stream.buffer.buffered_seconds < self.settings.station_low_buffer_s
        started = int(self.ctx.redis.hget(self.key, "generations") or 0) > 0
        if low and started and not self._low_reported:
            self.log.warning("station buffer low", buffered_s=round(self.stream.buffer.buffered_seconds, 2),
                             low_s=self.settings.station_low_buffer_s)
        self._low_reported = low and started
        self.history.record(self.station_id, self.stream.buffer.buffered_seconds,
                            buffer_health(self.stream.buffer.buffered_seconds, self.settings.station_low_buffer_s,
                                          started))

    # ------------------------------------------------------------ generations
    def _plan(self, st: dict[str, str]) -> tuple[int, str, float, float]:
        """(prompt index, prompt, start on the audio timeline, seconds to generate)."""
        audio_s = float(st.get("audio_s") or 0)
        prompts = json.loads(st.get("prompts") or "[]")
        rotate = float(st.get("rotate_every_s") or 0)
        if st.get("last_blob"):
            longest = self.settings.output_seconds - self.settings.station_prompt_seconds
        else:
            longest = min(FIRST_SECONDS, self.settings.output_seconds)
        index, prompt = prompt_for(prompts, rotate, audio_s)
        new_s = longest
        if rotate > 0 and len(prompts) > 1:
            boundary = (math.floor(audio_s / rotate + 1e-9) + 1) * rotate
            remaining = boundary - audio_s
            if remaining < MIN_NEW_SECONDS:  # rotate a little early rather than a stub
                index, prompt = prompt_for(prompts, rotate, boundary)
                remaining += rotate
            new_s = min(longest, remaining)
        return index, prompt, audio_s, max(MIN_NEW_SECONDS, new_s)

    def _enqueue(self, st: dict[str, str]) -> None:
        index, prompt, audio_s, new_s = self._plan(st)
        job = self.stations.queue_stretch(self.station_id, st, index=index, prompt=prompt, audio_start_s=audio_s,
                                          new_seconds=new_s)
        self.log.info("station generation queued", job_id=job.id, prompt_index=index, new_seconds=round(new_s, 2),
                      audio_start_s=round(audio_s, 2), buffered_s=round(self.stream.buffer.buffered_seconds, 2))

    def _append_blob(self, blob_id: str) -> tuple[float, dict[str, Any]]:
        info = self.ctx.blobs.info(blob_id)
        if info is None:
            raise KeyError(blob_id)
        meta = info.metadata
        decoded = audio.decode_wav(self.ctx.blobs.get(blob_id), max_seconds=3600)
        tags = {"prompt": meta.get("prompt") or "", "prompt_index": int(meta.get("prompt_index") or 0),
                "job_id": meta.get("job_id"), "audio_start_s": float(meta.get("audio_start_s") or 0)}
        start = self.stream.append(decoded.samples, decoded.sample_rate,
                                   overlap_s=float(meta.get("lead_in_s") or 0.0), meta=tags)
        return start, meta

    def _consume(self, st: dict[str, str], job: Job) -> None:
        if not job.output_blob:
            self._clear_job(job.id)
            return
        try:
            stream_start, meta = self._append_blob(job.output_blob)
        except KeyError:
            self._clear_job(job.id)
            self._record_error(st, "the generated audio was not found in storage", "INTERNAL")
            return
        generations = int(st.get("generations") or 0)
        audio_start = float(meta.get("audio_start_s") or 0)
        index = int(meta.get("prompt_index") or 0)
        fields: dict[str, Any] = {
            "job_id": "", "last_blob": job.output_blob, "prev_blob": st.get("last_blob") or "",
            "audio_s": round(audio_start + float(meta.get("duration") or 0), 3), "generations": generations + 1,
            "last_prompt_index": index, "last_generated_at": job.finished or time.time(),
        }
        if generations and str(index) != (st.get("last_prompt_index") or ""):
            rotate = float(st.get("rotate_every_s") or 0)
            rotations = json.loads(st.get("rotations") or "[]")
            scheduled = round(audio_start / rotate) * rotate if rotate else audio_start
            rotations.append({"index": index, "prompt": meta.get("prompt") or "",
                              "scheduled_audio_s": scheduled, "audio_s": audio_start,
                              "stream_s": round(stream_start, 3),
                              "plays_at": round(time.time() + stream_start - self.stream.buffer.position / 48000, 3)})
            fields["rotations"] = json.dumps(rotations[-MAX_ROTATIONS_KEPT:])
            self.log.info("station prompt rotated", prompt_index=index, scheduled_audio_s=scheduled,
                          audio_s=audio_start)
        self.ctx.redis.hset(self.key, mapping=fields)
        older = st.get("prev_blob") or ""
        if older and older not in (job.output_blob, st.get("last_blob")):
            self.ctx.blobs.delete(older)  # only the last two stretches are ever needed again

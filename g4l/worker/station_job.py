"""The ``station`` job kind: the next stretch of a station's endless music.

The first job of a station generates from its text prompt; every later one continues the
last ``prompt_seconds`` of the previous job's audio with the (possibly rotated) prompt, so
the music flows on. The stored result is the NEW audio only, plus a short lead-in (the
re-decoded end of the prompt) that the packager crossfades over the previous audio's end.

Station jobs run at background priority: :class:`JobQueue` serves interactive (device)
jobs first, and a running station job gives way between model steps when an interactive
job is waiting, re-queuing itself at the front of the background queue, so a station
never delays a bang by more than a model step or two.
"""

from __future__ import annotations

import time

from g4l import audio, keys
from g4l.context import Context
from g4l.engine.base import Cancelled, GenerationParams
from g4l.engine.cache import ModelCache
from g4l.jobs import lifecycle
from g4l.jobs.records import Job, new_job_id
from g4l.log import get_logger
from g4l.worker.runner import RUNNERS, complete_job_only

log = get_logger(__name__)

KIND = "station"
#: Waiting-set scores below this are interactive jobs (background ones add 1e15).
_INTERACTIVE_MAX_SCORE = 5e14
CHECK_EVERY_S = 0.25


class Preempted(Exception):
    """An interactive job is waiting: this background job steps aside."""


def interactive_waiting(ctx: Context) -> int:
    """How many interactive (device) jobs wait for a worker."""
    return int(ctx.redis.zcount(keys.WAITING, "-inf", _INTERACTIVE_MAX_SCORE))


class _StationProgress:
    """Progress callback: throttled progress, cancellation, and yielding to interactive jobs."""

    def __init__(self, ctx: Context, job: Job) -> None:
        self.ctx, self.job = ctx, job
        self._last_check = 0.0
        self._last_sent = 0.0
        self._waiting_seen = 0

    def __call__(self, step: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last_check < CHECK_EVERY_S:
            return
        self._last_check = now
        if self.ctx.jobs.cancel_requested(self.job.id):
            raise Cancelled()
        # Two checks in a row: a second worker may pick the interactive job up meanwhile.
        self._waiting_seen = self._waiting_seen + 1 if interactive_waiting(self.ctx) else 0
        if self._waiting_seen >= 2:
            raise Preempted()
        if now - self._last_sent >= self.ctx.settings.progress_interval_s:
            self._last_sent = now
            lifecycle.progressed(self.ctx, self.job, min(99, int(step * 100 / max(total, 1))))


def run_station_job(ctx: Context, cache: ModelCache, job: Job) -> None:
    """Generate the next stretch of a station and store it (GridFS kind ``station``).

    ``job.params``: description, temperature, top_k, top_p, cfg_coef, prompt_seconds,
    new_seconds, lead_in_s, prompt_index, audio_start_s. ``job.input_blob``: the previous
    stretch (None for the first).
    """
    p = job.params
    station_id = job.session_id
    bound = log.bind(job_id=job.id, station_id=station_id)
    engine = cache.get(job.model)
    rate = engine.sample_rate
    new_s = float(p["new_seconds"])
    gen_kw = dict(top_k=int(p.get("top_k", 250)), top_p=float(p.get("top_p", 0.0)),
                  temperature=float(p.get("temperature", 1.0)), cfg_coef=float(p.get("cfg_coef", 3.0)),
                  description=p.get("description") or None)
    progress = _StationProgress(ctx, job)
    started = time.perf_counter()
    lead_in_s = 0.0
    try:
        if job.input_blob:
            previous = audio.decode_wav(ctx.blobs.get(job.input_blob), max_seconds=3600)
            prompt = audio.tail(audio.resample(previous.samples, previous.sample_rate, rate), rate,
                                float(p["prompt_seconds"]))
            prompt_s = prompt.shape[1] / rate
            output = engine.continue_audio(prompt, GenerationParams(duration=prompt_s + new_s, **gen_kw), progress)
            lead = min(int(round(float(p.get("lead_in_s", 0.05)) * rate)), prompt.shape[1])
            new = output[:, prompt.shape[1] - lead:]
            lead_in_s = lead / rate
        else:
            new = engine.generate(GenerationParams(duration=new_s, **gen_kw), progress)
    except Preempted:
        _requeue(ctx, job)
        bound.info("station job yielded to an interactive job")
        return
    model_seconds = time.perf_counter() - started
    wav = audio.encode_wav(new, rate, "FLOAT")
    seconds = new.shape[1] / rate - lead_in_s
    blob_id = ctx.blobs.put(wav, session_id=station_id, kind=KIND, job_id=job.id, station_id=station_id,
                            sample_rate=rate, channels=int(new.shape[0]), subtype="FLOAT", duration=seconds,
                            lead_in_s=lead_in_s, prompt=p.get("description") or "",
                            prompt_index=int(p.get("prompt_index", 0)),
                            audio_start_s=float(p.get("audio_start_s", 0.0)))
    complete_job_only(ctx, job, blob_id, model_seconds=round(model_seconds, 3))
    bound.info("station audio generated", seconds=round(seconds, 2), model_seconds=round(model_seconds, 3),
               prompt_index=p.get("prompt_index", 0))


def _requeue(ctx: Context, job: Job) -> None:
    """Replace ``job`` by an identical one at the front of the background queue."""
    again = Job(id=new_job_id(), kind=job.kind, session_id=job.session_id, model=job.model, params=job.params,
                input_blob=job.input_blob, priority="background")
    ctx.queue.enqueue(again, front=True)
    ctx.redis.hset(keys.station(job.session_id), "job_id", again.id)
    lifecycle.canceled(ctx, job)


RUNNERS[KIND] = run_station_job

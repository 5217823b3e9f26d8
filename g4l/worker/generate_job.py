"""``generate`` jobs (``POST /api/v1/generate``): text-only or audio-prompted generations
that belong to no device session.

The result is exactly ``duration`` seconds: at the model's rate (mono/stereo as the model
makes it) for a text prompt; at the prompt audio's rate, channel count and sample format
when the job continues audio (the result then begins with the prompt, as MusicGen
re-decodes it, like the device's 30 s outputs). Durations over the model's window (30 s)
use AudioCraft's windowed extension.
"""

from __future__ import annotations

import time

import numpy as np

from g4l import audio
from g4l.context import Context
from g4l.engine.base import Cancelled, GenerationParams
from g4l.engine.cache import ModelCache
from g4l.jobs.records import Job
from g4l.log import get_logger
from g4l.worker.runner import RUNNERS, ProgressReporter, complete_job_only

log = get_logger(__name__)

KIND = "generate"


def fit_length(samples: np.ndarray, frames: int) -> np.ndarray:
    """Exactly ``frames`` frames: cut, or pad with silence (the model may stop a few short)."""
    if samples.shape[1] >= frames:
        return samples[:, :frames]
    return np.pad(samples, ((0, 0), (0, frames - samples.shape[1])))


def run_generate(ctx: Context, cache: ModelCache, job: Job) -> None:
    """Generate, store the WAV in GridFS and complete the job (or raise :class:`Cancelled`)."""
    p = job.params
    duration = float(p["duration"])
    engine = cache.get(job.model)
    gen = GenerationParams(
        top_k=int(p.get("top_k", 250)), top_p=float(p.get("top_p", 0.0)),
        temperature=float(p.get("temperature", 1.0)), cfg_coef=float(p.get("cfg_coef", 3.0)),
        description=p.get("description") or None, duration=duration,
        seed=int(p["seed"]) if p.get("seed") is not None else None,
    )
    reporter = ProgressReporter(ctx, job)
    # Past one model window AudioCraft reports steps per window; scale them to the whole job.
    expected_steps = int(duration * float(getattr(engine, "frame_rate", 50.0)))

    def on_progress(step: int, total: int) -> None:
        reporter(step, max(total, expected_steps))

    started = time.perf_counter()
    if job.prompt_blob:
        prompt = audio.decode_wav(ctx.blobs.get(job.prompt_blob), max_seconds=3600)
        output = engine.continue_audio(audio.resample(prompt.samples, prompt.sample_rate, engine.sample_rate),
                                       gen, on_progress)
    else:
        output = engine.generate(gen, on_progress)
    model_seconds = time.perf_counter() - started
    rate = int(p.get("sample_rate") or engine.sample_rate)
    channels = int(p.get("channels") or engine.channels)
    result = audio.to_channels(audio.resample(output, engine.sample_rate, rate), channels)
    result = fit_length(result, int(round(duration * rate)))
    wav = audio.encode_wav(result, rate, str(p.get("subtype") or "PCM_16"))
    if ctx.jobs.cancel_requested(job.id):  # canceled after the last model step: store nothing
        raise Cancelled()
    blob_id = ctx.blobs.put(wav, session_id=job.session_id, kind="output", job_id=job.id, sample_rate=rate,
                            channels=channels, subtype=audio.wav_subtype(str(p.get("subtype") or "PCM_16")),
                            duration=duration, source=job.prompt_blob or "")
    complete_job_only(ctx, job, blob_id, model_seconds=round(model_seconds, 3))
    log.info("job completed", job_id=job.id, kind=KIND, model=job.model, seconds=duration,
             model_seconds=round(model_seconds, 3))


RUNNERS[KIND] = run_generate

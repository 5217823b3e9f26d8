"""``text_to_audio`` (jerry: Stable Audio Open Small): audio from a text prompt, belonging
to no session.

The result is a 44.1 kHz stereo 16-bit WAV exactly ``output_seconds`` long (the engine
renders its whole window and trims; a few frames short or long are cut or padded here
so the length is exact whatever the engine does). The seed used is in the result's
metadata and on the job's spec.
"""

from __future__ import annotations

from typing import Protocol, cast

import numpy as np

from g4l import audio
from g4l.engine.base import ProgressCallback, TextToAudioParams
from g4l.errors import GenerationFailed
from g4l.jobs.kinds import KindName
from g4l.worker.kinds.generate import fit_length
from g4l.worker.kinds.registry import JobKind, Outcome, Run


class TextToAudioEngine(Protocol):
    """What this kind needs of an engine (:class:`g4l.engine.stable_audio.StableAudioEngine`)."""

    sample_rate: int
    channels: int

    def text_to_audio(self, params: TextToAudioParams, on_progress: ProgressCallback | None = None) -> np.ndarray:
        ...


def engine_params(run: Run) -> TextToAudioParams:
    """The engine's parameters from the job's spec (resolved by the service: never a default here)."""
    spec = run.job.spec
    if spec.text is None or spec.description is None or spec.seed is None:
        raise GenerationFailed("this text-to-audio job has no prompt, seed or parameters")
    t = spec.text
    return TextToAudioParams(prompt=spec.description, negative_prompt=t.negative_prompt, steps=t.steps,
                             cfg_scale=t.cfg_scale, seed=spec.seed, seconds_total=spec.output_seconds,
                             sampler_type=t.sampler_type)


class TextToAudio(JobKind):
    name = KindName.TEXT_TO_AUDIO

    def run(self, run: Run) -> Outcome:
        job, spec = run.job, run.job.spec
        engine = cast(TextToAudioEngine, run.engine)
        if not hasattr(engine, "text_to_audio"):
            raise GenerationFailed(f"model {job.model!r} cannot make audio from text")
        params = engine_params(run)
        output = run.model(engine.text_to_audio, params)
        fmt = spec.output.at(engine.sample_rate, engine.channels)
        assert fmt.sample_rate is not None and fmt.channels is not None
        result = audio.to_channels(audio.resample(output, engine.sample_rate, fmt.sample_rate), fmt.channels)
        result = fit_length(result, int(round(spec.output_seconds * fmt.sample_rate)))
        wav = audio.encode_wav(result, fmt.sample_rate, fmt.subtype)
        meta = {"session_id": "", "kind": "output", "job_id": job.id, "sample_rate": fmt.sample_rate,
                "channels": fmt.channels, "subtype": audio.wav_subtype(fmt.subtype),
                "duration": spec.output_seconds, "seed": params.seed, "model": job.model}
        return Outcome(wav=lambda: wav, meta=meta, record={"seed": params.seed})

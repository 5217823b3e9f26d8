"""``generate`` (``POST /api/v1/generate``): a text-only or audio-prompted generation that
belongs to no device session.

The result is exactly ``output_seconds`` long: at the model's rate (mono/stereo as the
model makes it) for a text prompt; at the prompt audio's rate, channel count and sample
format when the job continues audio (the result then begins with the prompt, as MusicGen
re-decodes it). Lengths over the model's window (30 s) use AudioCraft's windowed extension.
"""

from __future__ import annotations

import numpy as np

from g4l import audio
from g4l.errors import GenerationFailed
from g4l.jobs.kinds import KindName
from g4l.worker.kinds.registry import JobKind, Outcome, Run


def fit_length(samples: np.ndarray, frames: int) -> np.ndarray:
    """Exactly ``frames`` frames: cut, or pad with silence (the model may stop a few short)."""
    if samples.shape[1] >= frames:
        return samples[:, :frames]
    return np.pad(samples, ((0, 0), (0, frames - samples.shape[1])))


class Generate(JobKind):
    name = KindName.GENERATE

    def run(self, run: Run) -> Outcome:
        job, spec, engine = run.job, run.job.spec, run.engine
        prompt = run.stored_prompt() if spec.prompt is not None else None
        if spec.prompt is not None and prompt is None:
            raise GenerationFailed("the prompt audio of this job is gone from storage")
        if prompt is not None:
            output = run.model(engine.continue_audio, prompt, spec.engine_params())
        else:
            output = run.model(engine.generate, spec.engine_params())
        fmt = spec.output.at(engine.sample_rate, engine.channels)
        assert fmt.sample_rate is not None and fmt.channels is not None
        result = audio.to_channels(audio.resample(output, engine.sample_rate, fmt.sample_rate), fmt.channels)
        result = fit_length(result, int(round(spec.output_seconds * fmt.sample_rate)))
        wav = audio.encode_wav(result, fmt.sample_rate, fmt.subtype)
        meta = {"session_id": job.session_id, "kind": "output", "job_id": job.id, "sample_rate": fmt.sample_rate,
                "channels": fmt.channels, "subtype": audio.wav_subtype(fmt.subtype),
                "duration": spec.output_seconds, "source": spec.prompt_blob or ""}
        return Outcome(wav=lambda: wav, meta=meta)

"""``station``: the next stretch of a station's endless music.

The first job of a station generates from its text prompt; every later one continues the
last ``prompt.seconds`` of the previous stretch (``input_blob``) with the (possibly
rotated) prompt, so the music flows on; a first job after a prompt change with a break or a
crossfade starts afresh. The stored result (24-bit FLAC) is the NEW audio only, plus a
short lead-in (the re-decoded end of the prompt) that the packager crossfades over the
previous stretch's end. Stretches past the model's window use AudioCraft's extension.

Station jobs run at background priority: interactive jobs go first, and a running station
job gives way between model steps when one waits (:class:`~g4l.worker.progress.Preempted`).
"""

from __future__ import annotations

from g4l import audio
from g4l.jobs.kinds import KindName
from g4l.worker.kinds.registry import JobKind, Outcome, Run


class Station(JobKind):
    name = KindName.STATION

    def run(self, run: Run) -> Outcome:
        ctx, job, spec, engine = run.ctx, run.job, run.job.spec, run.engine
        rate = engine.sample_rate
        lead_in_s = 0.0
        if spec.input_blob and spec.prompt is not None:
            # The previous chunk (FLAC, maybe minutes long): only its end is decoded.
            previous = audio.read_span(ctx.blobs.get(spec.input_blob), -(spec.prompt.seconds + 1.0))
            prompt = spec.prompt.cut(audio.resample(previous.samples, previous.sample_rate, rate), rate)
            prompt_s = prompt.shape[1] / rate  # the previous stretch may be shorter than planned
            output = run.model(engine.continue_audio, prompt, spec.engine_params(prompt_s + spec.new_seconds))
            lead = min(int(round(spec.lead_in_s * rate)), prompt.shape[1])
            new = output[:, prompt.shape[1] - lead:]
            lead_in_s = lead / rate
        else:
            new = run.model(engine.generate, spec.engine_params(spec.new_seconds))
        # FLAC, not float WAV: a station may keep hours of these waiting in GridFS.
        flac = audio.encode_flac(new, rate)
        seconds = new.shape[1] / rate - lead_in_s
        meta = {"session_id": job.session_id, "kind": "station", "job_id": job.id, "station_id": job.session_id,
                "sample_rate": rate, "channels": int(new.shape[0]), "subtype": "PCM_24", "format": "FLAC",
                "duration": seconds,
                "lead_in_s": lead_in_s, "prompt": spec.description or "", **spec.labels}
        return Outcome(wav=lambda: flac, meta=meta, record={"output_seconds": round(seconds, 2)})

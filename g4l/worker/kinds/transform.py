"""``transform`` (terry, ``transform_audio_request``): MelodyFlow rewrites a session's audio
toward a preset's text (or a custom prompt). The result replaces the session's audio as a
new version (``Operation.TRANSFORM``) made from the version the job started from, in the
input's own format (rate, channels, sample format) and exactly the input's length; undo
(and the device's ``undo_transform_request``) goes back to that version.
"""

from __future__ import annotations

import time

import numpy as np

from g4l import audio
from g4l.engine.base import TransformParams
from g4l.errors import GenerationFailed
from g4l.jobs.kinds import KindName
from g4l.jobs.spec import GenerationSpec
from g4l.store.history import Operation, VersionRecord
from g4l.store.sessions import format_field
from g4l.worker.kinds.registry import JobKind, Outcome, Run


def edit_params(spec: GenerationSpec) -> TransformParams:
    """The engine's parameters of a transform's spec (its text is the spec's description)."""
    edit = spec.edit
    if edit is None or not spec.description:
        raise GenerationFailed("this transform job has no edit parameters (queued by another server version?)")
    return TransformParams(text=spec.description, flowstep=edit.flowstep, solver=edit.solver, steps=edit.steps,
                           seed=spec.seed)


def in_input_shape(output: np.ndarray, frames: int, channels: int) -> np.ndarray:
    """The engine's stereo answer as the input was: ``channels`` channels (mono in, mono
    out: the client's take keeps its format, so a later continue still splices it byte for
    byte) and exactly ``frames`` frames (trimmed or padded with silence, should an engine
    round to its latent frames)."""
    out = audio.to_channels(output, channels)
    have = out.shape[1]
    if have > frames:
        out = out[:, :frames]
    elif have < frames:
        out = np.pad(out, ((0, 0), (0, frames - have)))
    return np.ascontiguousarray(out, dtype=np.float32)


class Transform(JobKind):
    """A transform of a device session's audio (see the module docstring)."""

    name = KindName.TRANSFORM

    def run(self, run: Run) -> Outcome:
        ctx, job, spec, engine = run.ctx, run.job, run.job.spec, run.engine
        params = edit_params(spec)
        fmt = spec.output
        assert fmt.sample_rate is not None and fmt.channels is not None
        # The engine counts its own solver steps over all windows; the worker's estimate in
        # latent frames (meant for MusicGen's token steps) would hold the percent down.
        run.progress.expected_steps = 0
        source = audio.decode_wav(run.input_wav(), max_seconds=1e9)
        # The worker hands a transform job its model's engine (a MelodyFlowEngine: the
        # job's spec names a MelodyFlow model); the Engine interface is MusicGen's.
        transform = getattr(engine, "transform", None)
        if transform is None:
            raise GenerationFailed(f"model {spec.model} cannot transform audio")
        output = run.model(transform, source.samples, source.sample_rate, params)
        samples = in_input_shape(output, source.frames, fmt.channels)
        if source.sample_rate != fmt.sample_rate:  # the spec's format is the input's: never expected
            samples = audio.resample(samples, source.sample_rate, fmt.sample_rate)
        subtype = audio.wav_subtype(fmt.subtype)
        wav = audio.encode_wav(samples, fmt.sample_rate, subtype)
        version = ctx.sessions.allocate_version(job.session_id) or 1
        duration = samples.shape[1] / fmt.sample_rate
        meta = {"session_id": job.session_id, "kind": "output", "job_id": job.id, "version": version,
                "parent_version": job.parent_version, "operation": Operation.TRANSFORM.value,
                "sample_rate": fmt.sample_rate, "channels": fmt.channels, "subtype": subtype,
                "duration": duration, "source": spec.input_blob}
        record = VersionRecord(version=version, parent=job.parent_version, operation=Operation.TRANSFORM,
                               blob=run.blob_id, input_blob=spec.input_blob, job_id=job.id, params=spec.summary(),
                               format=format_field(fmt.sample_rate, fmt.channels, subtype),
                               duration=round(duration, 4), created=time.time())
        learned = {"last_output_blob": run.blob_id, "last_kind": job.kind, "delivered": ""}
        return Outcome(wav=lambda: wav, meta=meta, session=learned,
                       notice={"version": version, "variation": spec.edit.variation if spec.edit else None},
                       record={"output_seconds": round(duration, 2)}, version=record)

"""What bang, continue and retry share: a device session's generation, whose result goes
back to the client's socket first (the Redis hand-off) and into GridFS right after.

Each of the three is a subclass in its own module that only says what its session learns.
The result is a new version in the session's history (:mod:`g4l.store.history`), made
from the version the job names as its parent.
"""

from __future__ import annotations

import time
from typing import Any

from g4l import audio
from g4l.jobs import handoff
from g4l.jobs.records import Job
from g4l.jobs.spec import Assembly
from g4l.store.history import Operation, VersionRecord
from g4l.store.sessions import format_field
from g4l.worker.assembly import build_result
from g4l.worker.kinds.registry import JobKind, Outcome, Run


class SessionKind(JobKind):
    """A generation of a device session (see the subclasses)."""

    def learns(self, job: Job) -> dict[str, Any]:
        """What the session remembers of this job besides its new current audio."""
        return {}

    def run(self, run: Run) -> Outcome:
        ctx, job, spec, engine = run.ctx, run.job, run.job.spec, run.engine
        fmt = spec.output
        assert spec.prompt is not None and fmt.sample_rate is not None and fmt.channels is not None
        if spec.assembly is Assembly.SPLICE:
            run.prefetch_input()  # read while the model runs: needed to assemble the result
        prompt = run.stored_prompt()
        if prompt is None:  # the prompt window expired (a long queue, a requeue): cut it again
            source = audio.decode_wav(run.input_wav(), max_seconds=1e9)
            prompt = audio.resample(spec.prompt.cut(source.samples, source.sample_rate), source.sample_rate,
                                    engine.sample_rate)
        output = run.model(engine.continue_audio, prompt, spec.engine_params())
        source_wav = run.input_wav() if spec.assembly is Assembly.SPLICE else None
        result = build_result(spec, output, engine.sample_rate, source_wav)
        # A number of its own in the session's history (never reused, even by a rerun of this job).
        version = ctx.sessions.allocate_version(job.session_id) or 1
        duration = result.frames / result.rate
        meta = {"session_id": job.session_id, "kind": "output", "job_id": job.id, "version": version,
                "parent_version": job.parent_version, "operation": job.kind,
                "sample_rate": result.rate, "channels": result.channels, "subtype": result.subtype,
                "duration": duration, "source": spec.input_blob}
        fmt_field = format_field(result.rate, result.channels, result.subtype)
        record = VersionRecord(version=version, parent=job.parent_version, operation=Operation.parse(job.kind),
                               blob=run.blob_id, input_blob=spec.input_blob, job_id=job.id,
                               params=spec.summary(), format=fmt_field, duration=round(duration, 4),
                               created=time.time())
        learned = {"last_output_blob": run.blob_id, "last_kind": job.kind, "delivered": "", **self.learns(job)}
        splice = None
        if result.kept is not None and spec.input_blob:
            splice = handoff.Splice(spec.input_blob, result.drop_frames, result.rate, result.channels, result.subtype)
        return Outcome(wav=result.wav, meta=meta, session=learned, notice={"version": version},
                       record={"output_seconds": round(duration, 2)},
                       new_wav=result.new_wav if splice else None, splice=splice, version=record)


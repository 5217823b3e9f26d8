"""Runs one claimed job end to end: load audio, generate, assemble, store, report."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import numpy as np

from g4l import audio, keys
from g4l.context import Context
from g4l.engine.base import Cancelled, GenerationParams
from g4l.engine.cache import ModelCache
from g4l.errors import G4LError, GenerationFailed
from g4l.jobs import handoff, lifecycle, notices
from g4l.jobs.queue import Claimed
from g4l.jobs.records import Job
from g4l.log import get_logger
from g4l.store.sessions import format_field
from g4l.worker.generation import ClientFormat, build_result, generate, model_prompt, prompt_window
from g4l.worker.result_writer import PendingWrite, ResultWriter

log = get_logger(__name__)

#: How long a job waits for its input file, which the web node stores while the model runs.
INPUT_WAIT_S = 120.0


class ProgressReporter:
    """The engine's progress callback: throttled notices, ending below 100 (100 is sent
    with the result), and cancellation checks between model steps."""

    def __init__(self, ctx: Context, job: Job) -> None:
        self.ctx, self.job = ctx, job
        self.interval = ctx.settings.progress_interval_s
        self._last_sent = 0.0
        self._last_check = 0.0
        self._last_percent = -1

    def __call__(self, step: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last_check >= 0.25:
            self._last_check = now
            if self.ctx.jobs.cancel_requested(self.job.id):
                raise Cancelled()
        percent = min(99, int(step * 100 / max(total, 1)))
        if percent != self._last_percent and now - self._last_sent >= self.interval:
            self._last_sent, self._last_percent = now, percent
            lifecycle.progressed(self.ctx, self.job, percent)


def _wait_for_blob(ctx: Context, blob_id: str, stop: threading.Event | None = None) -> bytes:
    deadline = time.monotonic() + INPUT_WAIT_S
    while True:
        try:
            return ctx.blobs.get(blob_id)
        except KeyError:
            if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                raise GenerationFailed("the input audio never arrived in storage") from None
            time.sleep(0.05)


class InputPrefetch:
    """Reads a job's input file in a thread while the model runs: the web node stores it
    meanwhile, and the worker needs it only after the model, to assemble the result."""

    def __init__(self, ctx: Context, blob_id: str) -> None:
        self._stop = threading.Event()
        self._done = threading.Event()
        self._data: bytes | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(ctx, blob_id), name="input-prefetch", daemon=True)
        self._thread.start()

    def _run(self, ctx: Context, blob_id: str) -> None:
        try:
            self._data = _wait_for_blob(ctx, blob_id, self._stop)
        except BaseException as exc:  # handed to the job's thread by result()
            self._error = exc
        finally:
            self._done.set()

    def result(self) -> bytes:
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._data is not None
        return self._data

    def cancel(self) -> None:
        self._stop.set()


#: Job kinds other than the device's (bang/continue/retry) register a runner here:
#: ``RUNNERS["generate"] = fn(ctx, cache, job)``; the module doing so is imported by
#: :mod:`g4l.worker.kinds`. A runner must end the job through :mod:`g4l.jobs.lifecycle`
#: (or :func:`complete`) in every outcome.
RUNNERS: dict[str, Callable[[Context, ModelCache, Job], None]] = {}
SESSION_KINDS = ("bang", "continue", "retry")


def run_job(ctx: Context, cache: ModelCache, job: Job, *, writer: ResultWriter | None = None,
            claimed: Claimed | None = None) -> bool:
    """Execute ``job``; every outcome ends in a final state with a notice. Returns True
    when ``writer`` took over the result's GridFS write and the acknowledgement of
    ``claimed`` (the caller acknowledges otherwise)."""
    if job.kind not in SESSION_KINDS:
        runner = RUNNERS.get(job.kind)
        if runner is None:
            lifecycle.failed(ctx, job, GenerationFailed(f"this worker cannot run '{job.kind}' jobs",
                                                        session_id=job.session_id))
            return
        try:
            runner(ctx, cache, job)
        except Cancelled:
            lifecycle.canceled(ctx, job)
        except G4LError as exc:
            lifecycle.failed(ctx, job, exc)
        except Exception as exc:
            log.exception("job crashed", job_id=job.id, kind=job.kind)
            lifecycle.failed(ctx, job, GenerationFailed(f"generation failed: {type(exc).__name__}: {exc}"[:300],
                                                        session_id=job.session_id))
        return False
    return _run_session_job(ctx, cache, job, writer, claimed)


def _load_prompt(ctx: Context, job: Job, fmt: ClientFormat, prompt_seconds: float, engine_rate: int,
                 prefetch: InputPrefetch | None) -> np.ndarray:
    """The model's prompt: the window the web node left in Redis, else (expired, or a
    job requeued after a long wait) cut from the stored input."""
    prompt_wav = ctx.redis_bytes.get(keys.prompt(job.id))
    if prompt_wav is None and job.prompt_blob:
        prompt_wav = ctx.blobs.get(job.prompt_blob)
    if prompt_wav is not None:
        prompt_audio = audio.decode_wav(prompt_wav, max_seconds=3600)
        return model_prompt(prompt_audio.samples, prompt_audio.sample_rate, engine_rate)
    source_wav = prefetch.result() if prefetch is not None else _wait_for_blob(ctx, job.input_blob)
    source = audio.decode_wav(source_wav, max_seconds=1e9).samples
    return model_prompt(prompt_window(source, fmt.sample_rate, job.kind, prompt_seconds), fmt.sample_rate,
                        engine_rate)


def _run_session_job(ctx: Context, cache: ModelCache, job: Job, writer: ResultWriter | None,
                     claimed: Claimed | None) -> bool:
    bound = log.bind(job_id=job.id, session_id=job.session_id, kind=job.kind, model=job.model)
    settings = ctx.settings
    p = job.params
    prompt_seconds = float(p.get("prompt_duration") or settings.default_prompt_seconds)
    fmt = ClientFormat(int(p["sample_rate"]), int(p["channels"]), str(p.get("subtype") or "PCM_16"))
    prefetch = InputPrefetch(ctx, job.input_blob) if job.input_blob and job.kind != "bang" else None
    try:
        engine = cache.get(job.model)
        prompt = _load_prompt(ctx, job, fmt, prompt_seconds, engine.sample_rate, prefetch)
        gen = GenerationParams(
            top_k=int(p.get("top_k", 250)), top_p=float(p.get("top_p", 0.0)),
            temperature=float(p.get("temperature", 1.0)), cfg_coef=float(p.get("cfg_coef", 3.0)),
            description=p.get("description") or None, duration=settings.output_seconds, seed=p.get("seed"),
        )
        output, model_seconds = generate(engine, prompt, gen, ProgressReporter(ctx, job))
        started = time.perf_counter()
        source_wav = prefetch.result() if prefetch is not None and job.kind != "bang" else None
        result = build_result(job.kind, output, engine.sample_rate, fmt, source_wav, prompt_seconds)
        frames = result.frames
        session = ctx.sessions.get(job.session_id)
        version = (session.version if session else 0) + 1
        blob_id = ctx.blobs.new_id()
        meta = {"session_id": job.session_id, "kind": "output", "job_id": job.id, "version": version,
                "sample_rate": fmt.sample_rate, "channels": fmt.channels, "subtype": audio.wav_subtype(fmt.subtype),
                "duration": frames / fmt.sample_rate, "source": job.input_blob}
        # The client gets the result from a short-lived Redis key while GridFS stores it
        # (the slowest step for big files). The stream entry is acknowledged only after
        # the GridFS write, so if this worker dies in between, recovery stores the key.
        build_wav: Callable[[], bytes] = result.wav  # the splice runs in the writer's thread
        if result.kept is not None and p.get("splice_handoff") and job.input_blob:
            # The web node holds this input: only the new audio travels.
            handoff.put_spliced(ctx.redis_bytes, job.id, result.new_wav, handoff.Splice(
                job.input_blob, result.drop_frames, fmt.sample_rate, fmt.channels, audio.wav_subtype(fmt.subtype)))
        else:
            whole = result.wav()
            handoff.put_whole(ctx.redis_bytes, job.id, whole)
            build_wav = lambda: whole  # noqa: E731  (built once)
        ctx.jobs.update(job.id, output_meta=json.dumps(meta))
        post_seconds = time.perf_counter() - started
        _completed(ctx, job, blob_id, version, fmt, model_seconds=round(model_seconds, 3),
                   post_seconds=round(post_seconds, 3))
        bound.info("job completed", model_seconds=round(model_seconds, 3), post_seconds=round(post_seconds, 3),
                   output_seconds=round(frames / fmt.sample_rate, 2))
        if writer is not None and claimed is not None:
            ctx.queue.release(job.id)  # no longer running; the entry stays until the write
            writer.submit(PendingWrite(job, claimed, blob_id, build_wav, meta))
            return True
        stored = time.perf_counter()
        ctx.blobs.put(build_wav(), blob_id=blob_id, **meta)
        store_seconds = time.perf_counter() - stored
        ctx.jobs.update(job.id, store_seconds=round(store_seconds, 3))
    except Cancelled:
        lifecycle.canceled(ctx, job)
    except G4LError as exc:
        exc.session_id = job.session_id
        lifecycle.failed(ctx, job, exc)
    except Exception as exc:  # a model or storage fault: report it, keep the worker alive
        bound.exception("job crashed")
        lifecycle.failed(ctx, job, GenerationFailed(f"generation failed: {type(exc).__name__}: {exc}"[:300],
                                                    session_id=job.session_id))
    finally:
        if prefetch is not None:
            prefetch.cancel()
        ctx.redis.delete(keys.prompt(job.id))
    return False


def complete_job_only(ctx: Context, job: Job, blob_id: str | None, **fields: object) -> None:
    """Mark a non-session job completed (no session pointers) and notify."""
    now = time.time()
    job.status, job.output_blob, job.finished, job.progress = "completed", blob_id, now, 100
    ctx.jobs.update(job.id, status="completed", output_blob=blob_id, finished=now, progress=100, **fields)
    if job.started:
        ctx.queue.record_duration(now - job.started)
    notices.publish(ctx.redis, notices.COMPLETED, job_id=job.id, session_id=job.session_id, kind=job.kind,
                    blob_id=blob_id)


def _completed(ctx: Context, job: Job, blob_id: str, version: int, fmt: ClientFormat,
               **timings: float) -> None:
    now = time.time()
    job.status, job.output_blob, job.finished, job.progress = "completed", blob_id, now, 100
    # Timings stay on the job record: benchmarks read where the time went.
    ctx.jobs.update(job.id, status="completed", output_blob=blob_id, finished=now, progress=100, **timings)
    fields = {"status": "idle", "progress": 100, "current_blob": blob_id, "last_output_blob": blob_id,
              "version": version, "last_kind": job.kind, "error": "", "error_code": "",
              "current_format": format_field(fmt.sample_rate, fmt.channels, audio.wav_subtype(fmt.subtype))}
    if job.kind == "continue":
        fields["retry_input_blob"] = job.input_blob
    ctx.sessions.update_if_job(job.session_id, job.id, **fields)
    if job.started:
        ctx.queue.record_duration(now - job.started)
    notices.publish(ctx.redis, notices.COMPLETED, job_id=job.id, session_id=job.session_id, kind=job.kind,
                    blob_id=blob_id, version=version)

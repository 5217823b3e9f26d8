"""What a kind's runner is: one class a kind that turns a claimed job into a result.

A runner says how its prompt is built, how its result is assembled, what is stored and
what its session learns; the :class:`~g4l.worker.worker.Worker` does the rest (claim,
progress, cancellation, hand-off, storage, the life-cycle transitions) the same way for
every kind. What a kind *is* (its stream, its events, deliver-first...) is its record in
:mod:`g4l.jobs.kinds`; the runners are listed in :data:`g4l.worker.kinds.RUNNERS`.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from g4l import audio, keys
from g4l.context import Context
from g4l.engine.base import Engine
from g4l.errors import GenerationFailed
from g4l.jobs import handoff, kinds
from g4l.jobs.kinds import KindName
from g4l.jobs.records import Job
from g4l.store.history import VersionRecord
from g4l.worker.progress import ProgressReporter

#: How long a job waits for its input file, which the web node stores while the model runs.
INPUT_WAIT_S = 120.0


class InputPrefetch:
    """Reads a job's input file in a thread while the model runs: the web node stores it
    meanwhile, and a continue needs it only after the model, to assemble the result."""

    def __init__(self, ctx: Context, blob_id: str) -> None:
        self._stop = threading.Event()
        self._done = threading.Event()
        self._data: bytes | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(ctx, blob_id), name="input-prefetch", daemon=True)
        self._thread.start()

    def _run(self, ctx: Context, blob_id: str) -> None:
        try:
            self._data = ctx.blobs.wait(blob_id, INPUT_WAIT_S, stop=self._stop.is_set)
        except KeyError:
            self._error = GenerationFailed("the input audio never arrived in storage")
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


@dataclass
class Run:
    """One job in the hands of its kind.

    :param blob_id: the id reserved for the result in GridFS.
    :param progress: the engine's progress callback (cancellation, preemption).
    """

    ctx: Context
    job: Job
    engine: Engine
    blob_id: str
    progress: ProgressReporter
    #: Seconds the model ran, and when it finished (``time.perf_counter``).
    model_seconds: float = 0.0
    model_done: float = 0.0
    _prefetch: InputPrefetch | None = field(default=None, init=False, repr=False)

    def model(self, fn: Callable[..., np.ndarray], *args: Any) -> np.ndarray:
        """Run an engine call (``continue_audio`` / ``generate``) with this job's progress
        callback, timing it."""
        started, paced_from = time.perf_counter(), time.monotonic()
        output = fn(*args, self.progress)
        self.progress.hold_pace(paced_from)
        self.model_done = time.perf_counter()
        self.model_seconds = self.model_done - started
        return output

    def prefetch_input(self) -> None:
        """Start reading the job's input file now, while the model runs."""
        if self._prefetch is None and self.job.spec.input_blob:
            self._prefetch = InputPrefetch(self.ctx, self.job.spec.input_blob)

    def input_wav(self) -> bytes:
        """The job's input file (waited for: the web node may still be storing it).
        :raises GenerationFailed: it never arrived."""
        self.prefetch_input()
        if self._prefetch is None:
            raise GenerationFailed("this job has no input audio")
        return self._prefetch.result()

    def stored_prompt(self) -> np.ndarray | None:
        """The model-ready prompt window a web node left for this job (Redis, or the
        spec's ``prompt_blob``) at the engine's rate, or None (expired: cut it from the
        input instead)."""
        wav = self.ctx.redis_bytes.get(keys.prompt(self.job.id))
        if wav is None and self.job.spec.prompt_blob:
            try:
                wav = self.ctx.blobs.get(self.job.spec.prompt_blob)
            except KeyError:  # swept with its job's retention
                wav = None
        if wav is None:
            return None
        decoded = audio.decode_wav(wav, max_seconds=3600)
        return audio.resample(decoded.samples, decoded.sample_rate, self.engine.sample_rate)

    def close(self) -> None:
        if self._prefetch is not None:
            self._prefetch.cancel()


@dataclass
class Outcome:
    """What a kind made of its job.

    :param wav: builds the whole result file (a splice may run later, in the writer).
    :param meta: the result's GridFS metadata (``session_id`` and ``kind`` included).
    :param session: what the job's session learns.
    :param version: the version its session's history gains (made current).
    :param splice: for a kind that delivers first: the result as the input's kept part
        plus new audio, so only ``new_wav`` needs to travel (``handoff.put_spliced``).
    """

    wav: Callable[[], bytes]
    meta: dict[str, Any]
    session: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
    notice: dict[str, Any] = field(default_factory=dict)
    new_wav: bytes | None = None
    splice: handoff.Splice | None = None
    version: VersionRecord | None = None


class JobKind(abc.ABC):
    """The runner of one kind of job. Subclasses set :attr:`name` and implement :meth:`run`."""

    name: ClassVar[KindName]

    @property
    def deliver_first(self) -> bool:
        """The result goes to the web nodes before GridFS has it (the kind table says)."""
        return kinds.KINDS[self.name].deliver_first

    @abc.abstractmethod
    def run(self, run: Run) -> Outcome:
        """Generate and assemble the result. Raise :class:`~g4l.engine.base.Cancelled`
        (from the progress callback), a :class:`~g4l.errors.G4LError`, or let any other
        error through: the worker turns each into the right ending."""

"""Batches the calls that meet at a model: requests that arrive while one batch runs go
together in the next one.

For families whose sampler makes a whole clip in one short run (Stable Audio Open Small:
8 steps), a batch cannot be joined halfway as MusicGen's decoding loop can; instead each
job's thread submits its request and waits, and one thread per model runs what has
gathered as one batched call. Each request keeps its own progress callback and its own
cancellation: a request cancelled mid-batch is answered :class:`Cancelled` (its row is
finished and dropped), and the batch stops early only when every request in it is gone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from g4l.engine.base import Cancelled, ProgressCallback, TextToAudioParams

P = TypeVar("P")
R = TypeVar("R")

#: ``run(params, on_progress) -> results`` (one per request, in order): the family's batched call.
BatchCall = Callable[[list[P], ProgressCallback], list[R]]


@dataclass
class _Request(Generic[P, R]):
    params: P
    on_progress: ProgressCallback | None
    done: threading.Event = field(default_factory=threading.Event)
    result: R | None = None
    error: BaseException | None = None
    cancelled: bool = False


class MicroBatcher(Generic[P, R]):
    """One model's batching thread (see the module docstring).

    :param run: the batched call.
    :param max_batch: most requests in one call.
    :param name: the thread's name (logs, debuggers).
    :param key: requests with equal keys may share a call (e.g. the same sampler and step
        count); the oldest waiting request's key picks the next batch.
    """

    def __init__(self, run: BatchCall[P, R], max_batch: int, name: str = "microbatch",
                 key: Callable[[P], Hashable] | None = None) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._run = run
        self._key = key
        self._max_batch = max_batch
        self._pending: list[_Request[P, R]] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()
        #: Sizes of the batches run so far (for tests and benchmarks).
        self.batch_sizes: list[int] = []

    def submit(self, params: P, on_progress: ProgressCallback | None = None) -> R:
        """Run ``params`` in the next batch and wait for its result.

        :raises Cancelled: ``on_progress`` raised it.
        :raises RuntimeError: the batcher was stopped.
        """
        request: _Request[P, R] = _Request(params, on_progress)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the model's batching thread has stopped")
            self._pending.append(request)
            self._cond.notify_all()
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.result  # type: ignore[return-value]  # set whenever error is not

    def stop(self) -> None:
        """Finish the batch in hand, refuse the waiting requests, end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=60)

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._stopping)
                if self._stopping:
                    for request in self._pending:
                        request.error = RuntimeError("the model's batching thread has stopped")
                        request.done.set()
                    self._pending.clear()
                    return
                batch = self._take()
            self._run_batch(batch)

    def _take(self) -> list[_Request[P, R]]:
        """The next batch: the oldest request and the next ones that may share its call."""
        if self._key is None:
            batch = self._pending[: self._max_batch]
        else:
            first = self._key(self._pending[0].params)
            batch = [r for r in self._pending if self._key(r.params) == first][: self._max_batch]
        taken = {id(r) for r in batch}
        self._pending = [r for r in self._pending if id(r) not in taken]
        return batch

    def _run_batch(self, batch: list[_Request[P, R]]) -> None:
        self.batch_sizes.append(len(batch))

        def progress(step: int, total: int) -> None:
            for request in batch:
                if request.cancelled or request.on_progress is None:
                    continue
                try:
                    request.on_progress(step, total)
                except Cancelled:
                    request.cancelled = True
                except BaseException as exc:  # the request's own failure, not the batch's
                    request.error = exc
                    request.cancelled = True
            if all(r.cancelled for r in batch):
                raise Cancelled()

        try:
            results = self._run([r.params for r in batch], progress)
            if len(results) != len(batch):
                raise RuntimeError(f"the batched call answered {len(results)} results for {len(batch)} requests")
        except Cancelled:
            results = []
        except BaseException as exc:
            for request in batch:
                if request.error is None:
                    request.error = Cancelled() if request.cancelled else exc
                request.done.set()
            return
        for i, request in enumerate(batch):
            if request.error is None:
                if request.cancelled or not results:
                    request.error = Cancelled()
                else:
                    request.result = results[i]
            request.done.set()


class BatchedTextToAudio:
    """A text-to-audio engine whose calls from several job threads meet in one batched
    sampler run (:class:`MicroBatcher` over the engine's ``text_to_audio_batch``); the
    kinds call it as they call the engine itself."""

    def __init__(self, engine: Any, batcher: MicroBatcher[TextToAudioParams, np.ndarray]) -> None:
        self._engine = engine
        self._batcher = batcher

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)  # model_id, sample_rate, channels, family...

    def text_to_audio(self, params: TextToAudioParams, on_progress: ProgressCallback | None = None) -> np.ndarray:
        """The engine's ``text_to_audio``, run in the next batch."""
        return self._batcher.submit(params, on_progress)
